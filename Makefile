# omi-batch: `make demo` to see it work, `make test` to check it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install test lint bench demo offboard clean

install: $(STAMP)

# Re-installs only when the package metadata changes; fast when nothing did.
$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "omi-batch needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check omi_batch tests bench
	$(BIN)/ruff format --check omi_batch tests bench

bench: install
	$(BIN)/python bench/run.py

demo: install
	$(BIN)/python -m omi_batch.demo

# The interactive run for a person: make offboard CSV=departures.csv
offboard: install
	@test -n "$(CSV)" || { echo "usage: make offboard CSV=path/to/departures.csv" >&2; exit 2; }
	$(BIN)/omi-batch run "$(CSV)" $(if $(LISTEN),--listen $(LISTEN),)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .hypothesis
