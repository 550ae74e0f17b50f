# The two commands of the README, plus a few conveniences.
#   make series   run notebooks 01-04 top to bottom with the full recipe (QUICK=1: quick configuration)
#   make test     unit tests and `pytest --nbval notebooks/` in the quick configuration (what CI runs)
# Each creates .venv inside the repo on first use and reuses it afterwards.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-from-pyproject

# Real CIFAR-10 (as JPEGs) beside the checkout on the project's machines; users download instead.
SHARED_DATA := $(wildcard ../shared/data/cifar10-jpeg.tar.gz)
ifneq ($(SHARED_DATA),)
export CIFAR10_DATA ?= $(abspath $(SHARED_DATA))
endif

.PHONY: series test lab bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --editable .
	touch $@

series: $(STAMP)
	$(PY) -m helpers.series $(if $(QUICK),--quick)

test: export CIFAR10_QUICK := 1
test: export CIFAR10_OUTPUT := build/test
test: export CIFAR10_PROGRESS := off
test: $(STAMP)
	rm -rf $(CIFAR10_OUTPUT)  # a clean run: notebook 03 trains rather than reusing the last run's checkpoint
	$(PY) -m pytest --nbval --durations=10 tests notebooks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/data_loading.py --save
	$(PY) benchmarks/augment_throughput.py --save
	$(PY) benchmarks/training_throughput.py --save

clean:
	rm -rf build runs .pytest_cache
