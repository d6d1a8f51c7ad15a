# llsmflow: `make demo` runs the whole workflow on a synthetic acquisition; `make test` lints and tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := data/demo
DEMO_CONFIG := config/config.yaml

.PHONY: demo test lint install clean bench help

help:
	@echo "make demo   - create .venv, generate a synthetic acquisition, run the workflow, print the results"
	@echo "make test   - install test dependencies, lint (ruff, snakefmt, snakemake --lint), run pytest"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make clean  - remove demo data, work/ and results/"

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[workflow,test]"
	# separately: napari's npe2 wants rich >= 14, roc-validator declares rich < 14 (and works with 15)
	$(BIN)/python -m pip install --quiet -e ".[viewers]"
	touch $(STAMP)

install: $(STAMP)

$(DEMO_DIR)/raw/acquisition.json: | $(STAMP)
	$(BIN)/llsmflow synth $(DEMO_DIR)

demo: $(STAMP) $(DEMO_DIR)/raw/acquisition.json
	$(BIN)/llsmflow run --configfile $(DEMO_CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check src tests workflow/scripts bench
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/llsmflow synth --tiny data/lint >/dev/null 2>&1 || test -f data/lint/raw/acquisition.json
	$(BIN)/snakemake --lint --snakefile Snakefile --config raw_dir=data/lint/raw dataset=lint

test: lint
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/run_all.py

clean:
	rm -rf data/demo data/lint work results .snakemake
