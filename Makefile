# Quickstart: `make run` (set up + main job on the built-in data), `make test` (set up + tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# the test suite also runs the lm-eval adapter through the harness (~25 s more to install)
$(VENV)/.lmeval: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,lmeval]"
	touch $(VENV)/.lmeval

run: $(STAMP)
	$(VENV)/bin/pdclm run --preset cpu $(ARGS)

test: $(VENV)/.lmeval
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/pdclm bench all --preset cpu --out runs/bench-cpu --publish benchmarks $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pdclm tests
	$(VENV)/bin/ruff format --check pdclm tests

clean:
	rm -rf $(VENV) runs data .pytest_cache .hypothesis
