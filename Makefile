# Two commands do everything on a fresh machine with Python 3.11:
#   make run   - create .venv if missing, run the default workflow, build the HTML report
#   make test  - create .venv if missing, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ctseg-installed
CORES  ?= all

.PHONY: run test lint format report dag clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml
	$(BIN)/snakemake --cores 1 --configfile config.yaml --report results/report/report.html

test: $(STAMP)
	$(BIN)/pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check ctseg scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff format ctseg scripts tests benchmarks
	$(BIN)/snakefmt Snakefile rules

dag: $(STAMP)
	mkdir -p results && $(BIN)/snakemake --rulegraph mermaid-js > results/rulegraph.mmd

clean:
	rm -rf results .snakemake
