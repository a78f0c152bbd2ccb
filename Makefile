# Two commands do everything on a fresh machine with Python 3.11:
#   make run   - create .venv if missing, run the default workflow, build the HTML report
#   make test  - create .venv if missing, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ctseg-installed
CORES  ?= all
# Which torch wheel the venv gets (requirements.txt pins torch==2.13.0 either way):
#   TORCH=default  whatever pip's configured index serves: on an ordinary Linux x86_64 machine
#                  that is PyPI's CUDA build (several GB, with the NVIDIA libraries); on machines
#                  whose pip is configured for the CPU wheel (as the one this was built on), that.
#   TORCH=cpu      the CPU-only wheel from TORCH_INDEX (about 200 MB), first, then the rest.
#   TORCH=cuda     PyPI's own build (TORCH_CUDA_INDEX), whatever pip is configured to use.
TORCH ?= default
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_CUDA_INDEX ?= https://pypi.org/simple
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)
PIP := $(BIN)/pip install --disable-pip-version-check -q
ifeq ($(TORCH),cpu)
TORCH_STEP := $(PIP) --index-url $(TORCH_INDEX) "$(TORCH_PIN)"
else ifeq ($(TORCH),cuda)
TORCH_STEP := $(PIP) --index-url $(TORCH_CUDA_INDEX) "$(TORCH_PIN)"
else ifeq ($(TORCH),default)
TORCH_STEP := true
else
$(error TORCH=$(TORCH): choose default, cpu or cuda)
endif

.PHONY: run test lint format report dag clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(TORCH_STEP)
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
