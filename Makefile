# wikigpt: `make demo` sets everything up and runs the whole journey; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
# Which torch to install (pip arguments). The default takes PyPI's build for your machine (CUDA
# on Linux); CI pins the CPU wheel it has on disk: `make test TORCH=torch==2.13.0`.
TORCH  ?= "torch>=2.6"
BIN    := $(VENV)/bin
PY     ?= $(BIN)/python

# The demo's paths and extra arguments (the tests run it at a tiny scale through these).
DEMO_DATA     ?= data/demo
DEMO_OUT      ?= out
PRETRAIN_ARGS ?=
SFT_ARGS      ?=
EVAL_ARGS     ?=

.PHONY: setup demo demo-steps serve test bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.installed

# test-only clients (openai SDK, playwright); the browser itself is Debian's chromium (see .ci/run)
$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

demo: setup
	@$(MAKE) --no-print-directory demo-steps

demo-steps:
	@echo "== 1/6 Wikipedia sample -> clean text -> 8k BPE tokens + a knowledge graph ($(DEMO_DATA)), and a search index"
	$(PY) prepare_wiki.py --out $(DEMO_DATA) --tokenizer bpe:8192 --val_fraction 0.05 --overwrite
	$(PY) retrieve.py --data $(DEMO_DATA) --build
	@echo "-- when to say 'not found': a confidence learned on hand-written questions about these articles (bench/natural_qa, dev split)"
	$(PY) bench/bench_answers.py --data $(DEMO_DATA) --confidence
	$(PY) retrieve.py --data $(DEMO_DATA) --k 1 "What is the capital of Andorra?"
	@echo "== 2/6 pretrain Wiki-GPT on CPU ($(DEMO_OUT)/demo), then a sample"
	$(PY) train.py config/demo_cpu.toml --data=$(DEMO_DATA) --out_dir=$(DEMO_OUT)/demo --overwrite=true $(PRETRAIN_ARGS)
	$(PY) sample.py --ckpt $(DEMO_OUT)/demo/best.pt --prompt "Aristotle was" --max_new_tokens 60 --seed 1
	@echo "== 3/6 chat fine-tuning: built-in dialogues + questions answered from Wikipedia passages ($(DEMO_OUT)/chat)"
	$(PY) chat_sft.py config/sft_demo.toml --init_from=$(DEMO_OUT)/demo/best.pt --data=$(DEMO_DATA) --out_dir=$(DEMO_OUT)/chat --overwrite=true $(SFT_ARGS)
	@echo "== 4/6 a scripted chat"
	$(PY) chat.py --ckpt $(DEMO_OUT)/chat/best.pt --seed 0 < config/demo_questions.txt
	@echo "== 5/6 Wikipedia questions (a lead, a fact, a section, one the articles cannot answer), answered from the evidence found, with its sources"
	$(PY) chat.py --ckpt $(DEMO_OUT)/chat/best.pt --rag --data $(DEMO_DATA) --temperature 0 --max_new_tokens 64 < config/demo_rag_questions.txt
	@echo "== 6/6 is it any good? the base and chat models side by side, per kind of question, and their loss curves"
	$(PY) eval.py --ckpt $(DEMO_OUT)/demo/best.pt --ckpt $(DEMO_OUT)/chat/best.pt --out $(DEMO_OUT)/report.json $(EVAL_ARGS)
	$(PY) eval.py plot $(DEMO_OUT)/demo $(DEMO_OUT)/chat --out $(DEMO_OUT)/loss.png

# two workers, whole files each: many tests wait on subprocesses and sockets, so two cores run
# the suite in ~2/3 of the time of one worker (docs/tests.md); TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2
test: setup $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The page answers from Wikipedia when the demo's dataset has its index (the page's switch turns
# it off per conversation); without it, the model alone. SERVE_ARGS: more serve.py options
# (make serve SERVE_ARGS="--port 8001"; python serve.py -h lists them)
SERVE_ARGS ?=
serve: setup
	@if [ -f $(DEMO_DATA)/index/wikigpt_index.json ]; then \
		echo "$(PY) serve.py --ckpt $(DEMO_OUT)/chat/best.pt --rag --data $(DEMO_DATA) $(SERVE_ARGS)"; \
		$(PY) serve.py --ckpt $(DEMO_OUT)/chat/best.pt --rag --data $(DEMO_DATA) $(SERVE_ARGS); \
	else \
		echo "note: $(DEMO_DATA) has no search index: the page answers with the model alone. For answers from Wikipedia, run make demo (or: $(PY) retrieve.py --data $(DEMO_DATA) --build)"; \
		$(PY) serve.py --ckpt $(DEMO_OUT)/chat/best.pt $(SERVE_ARGS); \
	fi

bench: setup
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) data out
