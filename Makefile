# Two entry points for a fresh machine (see README.md):
#   make demo   set up .venv and run the main job on its embedded default
#   make test   set up .venv and run the linters and the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint venv bench clean

# torch is installed first and pinned to the CPU build (a local wheel on our machines);
# an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.stamp-base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	touch $@

$(VENV)/.stamp-demo: $(VENV)/.stamp-base pyproject.toml
	$(PIP) install -q -e ".[train,plot]"
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base pyproject.toml
	$(PIP) install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp-dev

demo: $(VENV)/.stamp-demo
	$(VENV)/bin/nashmoe compare --out runs/compare-default --overwrite

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

test: $(VENV)/.stamp-dev lint
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/bench_bargaining.py --out runs/bench

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
