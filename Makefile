# The two commands of the README, plus a few conveniences.
#   make series   run notebooks 01-04 top to bottom with the full recipe (QUICK=1: quick configuration;
#                 FRESH=1: train again from scratch, the old checkpoint kept aside)
#   make test     lint, then unit tests and `pytest --nbval notebooks/` in the quick configuration (what CI runs)
#   make lint     ruff (lint and format check) and mypy alone; make format applies the formatter
#   make clean    build outputs and caches of the tests; never a trained run
#   make delete-runs   deletes runs/ (checkpoints, histories, metrics), listing each checkpoint first
# Each creates .venv inside the repo on first use (the exact versions of constraints.txt) and reuses it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Where the data comes from is helpers/config.py's data_source(), the same inside and outside make.

.PHONY: series test lint format lab bench clean delete-runs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --constraint constraints.txt --editable '.[notebooks,test]'
	touch $@

series: $(STAMP)
	$(PY) -m helpers.series $(if $(QUICK),--quick) $(if $(FRESH),--fresh)

test: export CIFAR10_QUICK := 1
test: export CIFAR10_OUTPUT := build/test
test: export CIFAR10_PROGRESS := off
# precision auto times nothing in tests (notebook kernels included): it follows the capability table
test: export CIFAR10_MEASURE := off
test: lint
	rm -rf $(CIFAR10_OUTPUT)  # a clean run: notebook 03 trains rather than reusing the last run's checkpoint
	$(PY) -m pytest --nbval --durations=10 tests notebooks

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/data_loading.py --save
	$(PY) benchmarks/augment_throughput.py --save
	$(PY) benchmarks/training_throughput.py --save

clean:
	rm -rf build .pytest_cache

delete-runs:
	@if [ -d runs ]; then \
		echo "deleting runs/, with these trained checkpoints:"; find runs -name '*.pt' | sort | sed 's/^/  /'; \
		rm -rf runs; \
	else echo "no runs/ to delete"; fi
