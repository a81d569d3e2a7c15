# Two entry points (see README): `make demo` runs the main job, `make test` runs the whole suite.
# Both create .venv on first use. torch is installed first, from its pinned CPU build, so that the
# ML extras never pull a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo test lint bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.full: $(VENV)/.core
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,diffusion,hf,trl,tensorboard,mlflow]"
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/synthloop compare examples/gaussian.yaml --out runs/gaussian-compare

test: $(VENV)/.full
	$(OFFLINE) $(PY) -m pytest

lint: $(VENV)/.full
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
