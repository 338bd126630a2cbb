# wikigpt: `make demo` sets everything up and runs the whole journey; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
# Which torch to install. The default takes the right build for your machine from PyPI (CUDA on
# Linux); CI pins the CPU wheel: `make test TORCH=torch==2.13.0`.
TORCH  ?= torch>=2.4
BIN    := $(VENV)/bin

.PHONY: setup demo test bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python prepare_wiki.py --out data/demo --tokenizer bpe:8192 --val_fraction 0.05 --overwrite

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench.py

clean:
	rm -rf $(VENV) data out
