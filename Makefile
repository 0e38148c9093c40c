# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual environment on first use (and again when pyproject.toml changes).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= demo
COMPETITION ?= planet

.PHONY: demo test lint bench bench-full env

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/planet demo --competition $(COMPETITION) --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/resize.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/cached_rerun.py
	$(BIN)/python bench/ensemble.py
	$(BIN)/python bench/tables.py
	$(BIN)/python bench/reliability.py

bench-full: $(STAMP)  # the full-size Planet, stage by stage (~30 GB of disk, ~20 min)
	$(BIN)/python bench/full_scale.py
