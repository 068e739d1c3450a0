"""Regenerate ``flags/*.json``: the command-line flags of the pinned upstream servers, read from their sources.

Each file maps an option (``--max-model-len``) to the number of values it takes (0: a switch; ``"?"``, ``"*"``,
``"+"`` as argparse says). The stand-ins in this folder accept exactly these and exit 2 on any other, as argparse
and clap do.

- TGI 3.3.6: the ``Args`` struct of ``launcher/src/main.rs`` at tag v3.3.6 (clap derive: ``long`` gives
  ``--field-name``, ``short`` its first letter, a ``bool`` field is a switch)::

      python tests/standins/extract_flags.py tgi main.rs

- vLLM 0.33.0 and SGLang 0.5.23: the real argument parsers, built from the unpacked wheels
  (``pip download --no-deps vllm==0.33.0 sglang==0.5.23``; their import-time dependencies installed with
  ``pip install --no-deps --target``; ``VLLM_TARGET_DEVICE=cpu`` for vLLM)::

      PYTHONPATH=unpacked-vllm:deps python tests/standins/extract_flags.py vllm
      PYTHONPATH=unpacked-sglang:deps python tests/standins/extract_flags.py sglang
"""

from __future__ import annotations

import json
import os
import re
import sys

VERSIONS = {"tgi": "3.3.6", "vllm": "0.33.0", "sglang": "0.5.23"}
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flags")


def tgi_flags(main_rs: str) -> dict:
    body = main_rs[main_rs.index("struct Args {"):]
    body = body[:body.index("\n}\n")]
    flags: dict = {"--help": 0, "-h": 0, "--version": 0, "-V": 0}
    for m in re.finditer(r"#\[clap\(([^\]]*)\)\]\s*\n\s*(?:///[^\n]*\n\s*)*(\w+):\s*([^,\n]+),", body):
        attrs, name, typ = m.groups()
        takes = 0 if typ.strip() == "bool" else 1
        flags["--" + name.replace("_", "-")] = takes
        if re.search(r"\bshort\b", attrs):
            flags.setdefault("-" + name[0], takes)  # clap: the first letter; the first field claiming it wins
    return flags


def argparse_flags(parser) -> dict:
    flags = {}
    for action in parser._actions:
        nargs = action.nargs
        for option in action.option_strings:
            flags[option] = 0 if nargs == 0 else (1 if nargs is None else nargs)
    return flags


def main(kind: str, source: str | None = None) -> None:
    if kind == "tgi":
        with open(source, encoding="utf-8") as f:
            flags = tgi_flags(f.read())
    elif kind == "vllm":
        from vllm.entrypoints.common.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        flags = argparse_flags(make_arg_parser(FlexibleArgumentParser(prog="vllm serve")))
    else:
        import argparse

        from sglang.srt.server_args import ServerArgs

        parser = argparse.ArgumentParser()
        ServerArgs.add_cli_args(parser)
        flags = argparse_flags(parser)
    path = os.path.join(HERE, f"{kind}-{VERSIONS[kind]}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(flags.items())), f, indent=0)
        f.write("\n")
    print(f"{path}: {len(flags)} options")


if __name__ == "__main__":
    main(*sys.argv[1:])
