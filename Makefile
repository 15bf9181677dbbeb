# Every install step lives here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test zoo clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the CPU wheel; a plain `torch` pulls CUDA builds
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install nexus_ray with its test tools

demo: setup  ## greedy vs. best-of-8 + PRM on built-in problems of rising difficulty
	$(BIN)/nexus-ray demo

test: setup  ## run the test suite
	$(BIN)/python -m pytest -q

zoo: setup  ## retrain every zoo model from scratch (about an hour on 2 cores)
	$(BIN)/python -m nexus_ray.zoo.train all

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
