"""Stand-in for SGLang 0.5.23's ``python -m sglang.launch_server``: exactly its flags (flags/sglang-0.5.23.json),
served by the simulated GPU. The API key comes from ``--api-key`` only, as in SGLang."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import _standin  # noqa: E402

if __name__ == "__main__":
    opts, _ = _standin.parse("launch_server.py", sys.argv[1:], _standin.flags("sglang-0.5.23"))
    if "--model-path" not in opts and "--model" not in opts:
        _standin.refuse("launch_server.py", "the following arguments are required: --model-path")
    model = opts.get("--model-path") or opts["--model"]
    # SGLang logs every server argument at start-up, the API key included
    fields = ", ".join(f"{k[2:].replace('-', '_')}={v!r}" for k, v in opts.items())
    print(f"server_args=ServerArgs({fields})", flush=True)
    context = opts.get("--context-length")
    _standin.serve("sglang", opts.get("--host") or "127.0.0.1", int(opts.get("--port", 30000)),
                   opts.get("--served-model-name") or model, int(opts.get("--max-running-requests", 0) or 0) or 256,
                   _standin.check_context(int(context) if context else None, model, "context_length"),
                   opts.get("--api-key"))
