"""llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) with ``max_tokens`` a hard limit.

llama-cpp-python 0.3.36 (``Llama._create_completion``) skips its ``len(completion_tokens) >= max_tokens`` check
while the generated text ends inside a UTF-8 character (``if multibyte_fix > 0: ... continue``): an answer cut
at the limit inside a character gets more tokens than asked for, until the character is complete, and
``usage.completion_tokens`` says so (SmolLM2 writes "¶" as two byte tokens: max_tokens 48 gave 49). Here the
limit wins: generation stops at ``max_tokens``, as the OpenAI API (and vLLM, TGI) do, and the incomplete
character is left out of the text (the library decodes with ``errors="ignore"``).
"""

from __future__ import annotations

import inspect
import sys
import textwrap

OLD = "if multibyte_fix > 0:\n"
NEW = "if multibyte_fix > 0 and len(completion_tokens) < max_tokens:\n"


def honor_max_tokens() -> bool:
    """Patch ``Llama._create_completion`` (in this process); False when this llama-cpp-python has no such code."""
    from llama_cpp import llama

    source = textwrap.dedent(inspect.getsource(llama.Llama._create_completion))
    if source.count(OLD) != 1:
        return False
    namespace: dict = {}
    exec(compile(source.replace(OLD, NEW), llama.__file__, "exec"), llama.__dict__, namespace)
    llama.Llama._create_completion = namespace["_create_completion"]
    return True


def main() -> None:
    if not honor_max_tokens():
        print("finephrase: this llama-cpp-python's max_tokens handling is not the one patched; running it as is",
              file=sys.stderr)
    import runpy

    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
