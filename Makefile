# The two commands of the README do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: demo test lint typecheck unit bench campaign clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py $(shell find src -name "*.c" -o -name "*.h") | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ipsec-offload run --out $(OUT)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test
	$(BIN)/pytest -q -n 2

test: lint typecheck unit

bench: $(VENV)/.installed
	$(BIN)/ipsec-offload bench

# The 100,000-step fault campaign (spec section 9; tests/test_fault_campaign.py), minutes long.
campaign: $(VENV)/.installed-test
	$(BIN)/pytest -m slow -n 2 -rP tests/test_fault_campaign.py


clean:
	rm -rf $(VENV) $(OUT) bench.json .mypy_cache .pytest_cache .ruff_cache build
	rm -f src/ipsec_offload/agent/*.so
