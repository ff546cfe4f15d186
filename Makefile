# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing: the CPU torch wheel first (TORCH_SPEC), so that the project's torch
# range is already satisfied and pip pulls no multi-GB CUDA build, then the package with its test extras.

VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
STAMP := $(VENV)/.rankaudit-installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: env demo test test-fast bench dry-run clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: env
	$(SNAKEMAKE) --cores $(CORES)
	$(SNAKEMAKE) --cores $(CORES) --report report.html
	@echo
	@echo "Report written to $(CURDIR)/report.html (tables in results/tables/, figures in results/figures/)"

test: env
	$(PY) -m pytest

test-fast: env
	$(PY) -m pytest -m "not slow"

bench: env
	$(PY) benchmarks/run_all.py

dry-run: env
	$(SNAKEMAKE) -n --cores $(CORES)

clean:
	rm -rf results resources logs benchmarks/out report.html .snakemake
