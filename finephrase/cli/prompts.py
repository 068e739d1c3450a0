"""``finephrase prompts ...`` subcommands (registered by finephrase.cli.main).

    finephrase prompts list [--set S]
    finephrase prompts show NAME                     # set/name, a path or hf://datasets/OWNER/REPO/NAME@REV
    finephrase prompts render NAME --doc FILE        # the exact request JSON (messages + sampling params)
    finephrase prompts validate PATH...              # files or folders; exit 1 on any problem
    finephrase prompts push SET_DIR REPO_ID          # a Hub dataset repo: the files + a README card
    finephrase prompts pull REPO_ID[@REV] [--to DIR] # prints the resolved revision
"""

from __future__ import annotations

import json
import sys


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# ------------------------------------------------------------------------------------------- list / show
def cmd_list(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from finephrase.prompts import list_packaged_prompts

    table = Table(show_header=True)
    for col in ("prompt", "version", "suits", "context", "sha256", "description"):
        table.add_column(col)
    prompts = list_packaged_prompts(args.set)
    if args.set and not prompts:
        _err(f"error: no packaged prompt set {args.set!r}")
        return 2
    for pr in prompts:
        table.add_row(escape(pr.ref), pr.version, pr.suits, pr.context, pr.sha256[:12], escape(pr.description[:70]))
    Console().print(table)
    return 0


def cmd_show(args) -> int:
    import yaml

    from finephrase.prompts import load_prompt

    p = load_prompt(args.name)
    _out(f"prompt:       {p.ref}")
    _out(f"version:      {p.version}")
    _out(f"sha256:       {p.sha256}")
    if p.origin and p.origin != p.ref:
        _out(f"origin:       {p.origin}")
    if p.revision:
        _out(f"revision:     {p.revision}")
    _out(f"suits:        {p.suits}")
    _out(f"context:      {p.context}" + (f" (chunk context: {p.chunk_context})" if p.chunk_context else ""))
    _out(f"source:       {p.source.get('title', '')}" + (f" ({p.source['year']})" if p.source.get("year") else ""))
    if p.source.get("url"):
        _out(f"              {p.source['url']}")
    _out(f"generation:   {json.dumps(p.generation, sort_keys=True)}")
    _out("output rules: " + (yaml.safe_dump(p.output_rules, sort_keys=False, default_flow_style=True).strip()
                             if p.output_rules else "defaults"))
    _out("")
    _out(p.description)
    if p.source.get("notes"):
        _out("")
        _out("notes: " + p.source["notes"].strip())
    if p.system:
        _out("")
        _out("--- system " + "-" * 60)
        _out(p.system)
    _out("")
    _out("--- template " + "-" * 58)
    _out(p.template.rstrip())
    return 0


# ------------------------------------------------------------------------------------------- render
def _read_document(path: str, index: int) -> tuple[str, str]:
    """(id, text) of a text file, or of record ``index`` of a .jsonl / .jsonl.gz file."""
    import gzip

    if path.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i == index:
                    record = json.loads(line)
                    return str(record.get("id", i)), record["text"]
        raise FileNotFoundError(f"{path}: has no record {index}")
    with open(path, encoding="utf-8", errors="replace") as f:
        return path, f.read()


class _RequestRecorder:
    """The rephrase strategies' view of the step (``RewriteTools``: ``tokens``, ``budget_for``, ``payload``,
    ``sent_params``, ``stat_update``), over a RequestBuilder and with no server: ``generate`` records each
    request and answers with a stand-in that passes the prompt's cleaning rules, so every chunk's request is built."""

    def __init__(self, builder, prompt):
        from finephrase.inference.client.protocols import make_protocol

        self.tokens, self.budget_for, self.payload = builder.tokens, builder.budget_for, builder.payload
        self.sent_params = make_protocol("openai").sent_params  # Rephrase's default protocol
        self.payloads: list[dict] = []
        rules = prompt.output_rules
        self._prefix = (rules.get("strip_prefixes") or [""])[0]
        self._extract = rules.get("extract") or {}

    def stat_update(self, *args, **kwargs) -> None:
        pass

    async def generate(self, payload: dict):
        from datatrove.pipeline.inference.types import InferenceResult

        self.payloads.append(json.loads(json.dumps(payload)))
        answer = f"{self._prefix} <rewrite of part {len(self.payloads)}>".strip()
        if self._extract:
            answer = f"{self._extract['start']}\n{answer}\n{self._extract.get('end', '')}"
        return InferenceResult(text=answer, finish_reason="stop", usage={"prompt_tokens": 0, "completion_tokens": 0})


def _recorded_requests(builder, prompt, text: str, params: dict) -> tuple[list[dict], dict]:
    """The prompt's own strategy (truncate or chunked, as in Rephrase) run against the recorder."""
    import asyncio

    from datatrove.pipeline.inference.types import InferenceError

    from finephrase.errors import PromptError
    from finephrase.pipeline.rephrase import STRATEGIES

    recorder = _RequestRecorder(builder, prompt)
    try:
        entry = asyncio.run(STRATEGIES[prompt.context](recorder, prompt, text, params, recorder.generate))
    except InferenceError as e:
        raise PromptError(f"{prompt.ref}: could not build the request: {str(e.error)[:500]}") from None
    return recorder.payloads, entry


def build_requests(prompt, text: str, *, model: str = "default", generation_params: dict | None = None,
                   context_length: int | None = None, tokenizer: str | None = None) -> tuple[list[dict], dict]:
    """The request(s) Rephrase would send for one document, built by the same RequestBuilder (parameters, token
    budget, payload) and the same strategy (finephrase.pipeline.rephrase: truncate, or chunk by chunk).

    Returns (payloads, entry): one payload per request (a chunked prompt: one per chunk, later chunks carrying a
    placeholder where the previous chunk's rewrite goes) and the token accounting Rephrase would record
    (``source_tokens``, ``source_tokens_used``, ``truncated``, ``tokens_estimated``, ``chunks``).
    """
    from finephrase.inference.client.request_builder import RequestBuilder
    from finephrase.inference.client.tokens import TokenCounter

    builder = RequestBuilder(model, generation_params, context_length, TokenCounter(tokenizer))
    params = builder.params_for(prompt)
    payloads, entry = _recorded_requests(builder, prompt, text, params)
    keys = ("truncated", "source_tokens", "source_tokens_used", "chunks")
    return payloads, {**{k: entry[k] for k in keys}, "tokens_estimated": not builder.tokens.exact}


def cmd_render(args) -> int:
    from finephrase.prompts import load_prompt

    prompt = load_prompt(args.name)
    model, params, context_length, tokenizer = "default", {}, None, None
    if args.recipe:
        from finephrase.recipe import load_recipe

        recipe = load_recipe(args.recipe)
        prompt = recipe.apply(prompt)
        from finephrase.inference.client.backends import backend_for

        g = recipe.generator
        params = g.params.model_dump(exclude_none=True)
        settings = backend_for(g.server).request_settings(g)
        model, context_length, tokenizer = settings.model, settings.context_length, settings.tokenizer
    model = args.model or model
    context_length = args.context_length or context_length
    tokenizer = args.tokenizer or tokenizer
    if args.max_new_tokens:
        params["max_new_tokens"] = args.max_new_tokens
    if args.context:
        from dataclasses import replace

        prompt = replace(prompt, context=args.context)
    _, text = _read_document(args.doc, args.index)
    payloads, entry = build_requests(prompt, text, model=model, generation_params=params,
                                     context_length=context_length, tokenizer=tokenizer)
    _out(json.dumps(payloads if args.all else payloads[0], indent=2, ensure_ascii=False))
    est = " (estimated)" if entry.get("tokens_estimated") else ""
    _err(f"{prompt.ref} sha256 {prompt.sha256[:12]}: source {entry['source_tokens']} tokens{est}, "
         f"{entry['source_tokens_used']} sent" + (", truncated" if entry.get("truncated") else "")
         + (f"; chunked into {entry['chunks']} requests (later ones carry the previous part's rewrite"
            + ("" if args.all else "; --all prints them") + ")" if entry.get("chunks", 1) > 1 else ""))
    return 0


# ------------------------------------------------------------------------------------------- validate
def cmd_validate(args) -> int:
    from pathlib import Path

    from finephrase.errors import PromptError
    from finephrase.prompts import ChunkContext, load_any_file

    files: list[Path] = []
    failed = 0
    for raw in args.paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(x for x in p.rglob("*") if x.suffix in (".yaml", ".yml") and x.is_file())
            if not found:
                _err(f"error: {p}: no prompt files (*.yaml) in this folder")
                failed += 1
            files += found
        elif p.exists():
            files.append(p)
        else:
            _err(f"error: {p}: no such file or folder")
            failed += 1
    for f in files:
        try:
            item = load_any_file(f)
        except PromptError as e:
            _err(f"error: {e}")
            failed += 1
            continue
        except Exception as e:  # noqa: BLE001 - never a traceback for a bad file
            _err(f"error: {f}: {type(e).__name__}: {e}")
            failed += 1
            continue
        if isinstance(item, ChunkContext):
            _out(f"ok  {f}  (chunk context {item.name} v{item.version}, sha256 {item.sha256[:12]})")
        else:
            _out(f"ok  {f}  ({item.ref} v{item.version}, sha256 {item.sha256[:12]})")
    if failed:
        _err(f"{failed} problem(s) in {len(files)} file(s)")
        return 1
    return 0


# ------------------------------------------------------------------------------------------- hub
def cmd_push(args) -> int:
    from finephrase.prompts.hub import push_prompt_set

    info = push_prompt_set(args.set_dir, args.repo_id, private=args.private, revision=args.revision,
                           commit_message=args.message)
    _out(f"pushed {len(info['files'])} prompt file(s) + README.md to {info['url']}")
    _out(f"revision: {info['commit']}")
    _out(f"use: hf://datasets/{args.repo_id}/<name>@{info['commit']}")
    return 0


def cmd_pull(args) -> int:
    from finephrase.prompts.hub import parse_repo_rev, pull_prompt_set

    repo_id, revision = parse_repo_rev(args.repo)
    info = pull_prompt_set(repo_id, revision, to=args.to)
    _out(f"pulled {len(info['files'])} prompt file(s) from {repo_id}@{revision or 'main'} -> {info['path']}")
    _out(f"revision: {info['revision']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("prompts", help="list, show, render, validate, push and pull prompt files")
    psub = p.add_subparsers(dest="prompts_command", required=True)

    ls = psub.add_parser("list", help="list packaged prompts")
    ls.add_argument("--set", help="only this set (e.g. finephrase, nemotron-cc)")
    ls.set_defaults(func=cmd_list)

    sh = psub.add_parser("show", help="a prompt's text, source, parameters, rules and hash")
    sh.add_argument("name", help="set/name, a prompt file, or hf://datasets/OWNER/REPO/NAME@REV")
    sh.set_defaults(func=cmd_show)

    r = psub.add_parser("render", help="print the exact request JSON that would be sent for a document")
    r.add_argument("name", help="set/name, a prompt file, or hf://datasets/OWNER/REPO/NAME@REV")
    r.add_argument("--doc", required=True, help="a text file, or a .jsonl/.jsonl.gz file (see --index)")
    r.add_argument("--index", type=int, default=0, help="record of a jsonl file (default 0)")
    r.add_argument("--recipe", help="take the model, sampling overrides, context and tokenizer from a recipe")
    r.add_argument("--model", help="model name sent in the request")
    r.add_argument("--context-length", type=int, help="the server's context window (default 4096)")
    r.add_argument("--tokenizer", help="tokenizer (.gguf, tokenizer.json or folder); default: estimate")
    r.add_argument("--max-new-tokens", type=int)
    r.add_argument("--context", choices=["truncate", "chunked"], help="override the prompt's context mode")
    r.add_argument("--all", action="store_true", help="chunked: print every chunk's request (a JSON list)")
    r.set_defaults(func=cmd_render)

    v = psub.add_parser("validate", help="check prompt files (schema, template, rules); exit 1 on any problem")
    v.add_argument("paths", nargs="+", metavar="PATH", help="prompt files or folders")
    v.set_defaults(func=cmd_validate)

    pu = psub.add_parser("push", help="publish a folder of prompt files as a Hub dataset repo (+ README card)")
    pu.add_argument("set_dir")
    pu.add_argument("repo_id")
    pu.add_argument("--private", action="store_true")
    pu.add_argument("--revision", help="branch to push to (created if needed; default main)")
    pu.add_argument("--message", help="commit message")
    pu.set_defaults(func=cmd_push)

    pl = psub.add_parser("pull", help="download a published prompt set; prints the resolved revision")
    pl.add_argument("repo", metavar="REPO_ID[@REV]")
    pl.add_argument("--to", help="folder to write the files to (default: the Hub cache)")
    pl.set_defaults(func=cmd_pull)
