# The two commands of the README, plus a few conveniences.
#   make series   run notebooks 01-04 top to bottom with the full recipe (QUICK=1: quick configuration)
#   make test     lint, then unit tests and `pytest --nbval notebooks/` in the quick configuration (what CI runs)
#   make lint     ruff (lint and format check) and mypy alone; make format applies the formatter
# Each creates .venv inside the repo on first use (the exact versions of constraints.txt) and reuses it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Real CIFAR-10 (as JPEGs) beside the checkout on the project's machines; users download instead.
SHARED_DATA := $(wildcard ../shared/data/cifar10-jpeg.tar.gz)
ifneq ($(SHARED_DATA),)
export CIFAR10_DATA ?= $(abspath $(SHARED_DATA))
endif

.PHONY: series test lint format lab bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --constraint constraints.txt --editable '.[notebooks,test]'
	touch $@

series: $(STAMP)
	$(PY) -m helpers.series $(if $(QUICK),--quick)

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
	rm -rf build runs .pytest_cache
