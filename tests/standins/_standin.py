"""What the stand-in servers of this folder share: the strict reading of a command line against the flags of the
pinned upstream version (``flags/*.json``, see ``extract_flags.py``), and serving through the simulated batching
GPU (``tests/sim_gpu.py``, in this process: the API key never reaches a command line).

A stand-in accepts exactly the upstream flags: an unknown one, a missing value or a value given to a switch exits 2
with the message argparse (vLLM, SGLang) or clap (TGI) prints. What a flag does is simulated only where finephrase
depends on it (port, host, model name, batch size, context length, API key, TGI's shard socket); the others are
accepted and ignored.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)


def flags(name: str) -> dict:
    with open(os.path.join(HERE, "flags", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def refuse(prog: str, message: str, clap: bool = False) -> None:
    if clap:
        print(f"error: {message}\n\nUsage: {prog} [OPTIONS]\n\nFor more information, try '--help'.", file=sys.stderr)
    else:
        print(f"usage: {prog} [-h] [options]\n{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse(prog: str, argv: list[str], known: dict, positionals: int = 0, clap: bool = False,
          underscores: bool = False) -> tuple[dict, list[str]]:
    """({option: value, or True for a switch, or a list for nargs +/*}, positionals); exits 2 like upstream on an
    unknown option, a missing value or too many positionals."""
    options: dict = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            continue
        name, eq, inline = arg.partition("=")
        if underscores and name.startswith("--"):
            name = "--" + name[2:].replace("_", "-")  # vLLM's FlexibleArgumentParser
        if name not in known:
            refuse(prog, f"unexpected argument '{name}' found" if clap else f"unrecognized arguments: {arg}", clap)
        nargs = known[name]
        if nargs == 0:
            if eq:
                refuse(prog, f"argument {name}: ignored explicit argument '{inline}'", clap)
            options[name] = True
            continue
        values = [inline] if eq else []
        while not eq and i < len(argv) and not (argv[i].startswith("-") and len(argv[i]) > 1
                                                 and not argv[i][1:2].isdigit()):
            values.append(argv[i])
            i += 1
            if nargs in (1, "?"):
                break
        if not values and nargs not in ("?", "*"):
            refuse(prog, f"a value is required for '{name}' but none was supplied" if clap
                   else f"argument {name}: expected one argument", clap)
        options[name] = values if nargs in ("+", "*") or isinstance(nargs, int) and nargs > 1 else \
            (values[0] if values else True)
    if len(rest) > positionals:
        refuse(prog, f"unexpected argument '{rest[positionals]}' found" if clap
               else f"unrecognized arguments: {' '.join(rest[positionals:])}", clap)
    return options, rest


def model_context_length(model: str) -> int | None:
    """``max_position_embeddings`` of a local model folder's config.json (what the servers derive theirs from)."""
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("max_position_embeddings")


def check_context(requested: int | None, model: str, what: str) -> int:
    """The context length to serve: ``requested`` when not above the model's own (else exit 1, as vLLM and SGLang
    refuse it), else the model's, else 4096."""
    own = model_context_length(model)
    if requested and own and requested > own:
        print(f"ValueError: User-specified {what} ({requested}) is greater than the derived max_model_len "
              f"(max_position_embeddings={own} in model's config.json).", file=sys.stderr)
        sys.exit(1)
    return int(requested or own or 4096)


def serve(flavour: str, host: str, port: int, model: str, max_num_seqs: int, max_model_len: int,
          api_key: str | None, max_concurrent_requests: int | None = None) -> None:
    """Serve until killed: the simulated batching GPU, in this process."""
    sys.path.insert(0, TESTS)
    import sim_gpu

    argv = ["--port", str(port), "--host", host, "--flavour", flavour, "--model", model,
            "--max-num-seqs", str(max_num_seqs), "--max-model-len", str(max_model_len)]
    argv += ["--api-key", api_key] if api_key else []
    argv += ["--max-concurrent-requests", str(max_concurrent_requests)] if max_concurrent_requests else []
    print(f"{flavour} stand-in: serving {model} on {host}:{port} (simulated GPU)", flush=True)
    sim_gpu.main(argv)
