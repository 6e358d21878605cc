# The two set-up commands of the README: `make demo` (main job, offline) and `make test` (the test suite).
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test bench
install: .edgevp-installed
.edgevp-installed: pyproject.toml tools/setup.sh
	PYTHON=$(PYTHON) bash tools/setup.sh
	touch $@

demo: install
	$(PYTHON) -m edgevp demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) tools/bench_train.py
