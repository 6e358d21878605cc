# The two set-up commands of the README: `make demo` (main job, offline) and `make test` (the test suite).
PYTHON ?= python3
# set-up installs into this virtual environment in the checkout, never into $(PYTHON) itself (tools/setup.sh)
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test bench
install: .edgevp-installed
.edgevp-installed: pyproject.toml tools/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/setup.sh
	touch $@

demo: install
	$(PY) -m edgevp demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) tools/bench_train.py
