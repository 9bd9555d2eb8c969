# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
CATALOG ?= $(DATA)/clothing-dataset-small/test
PHOTO ?= $(DATA)/people/ochuman_000817.jpg
INDEX ?= demo-index

.PHONY: install demo test eval bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Build a small real catalog index from CATALOG, then look up PHOTO against it.
demo: install
	$(BIN)/shopfluence weights check
	$(BIN)/shopfluence index $(CATALOG) --out $(INDEX)
	$(BIN)/shopfluence look $(PHOTO) --index $(INDEX)

test: install
	$(BIN)/python -m pytest -q -x tests

eval: install
	$(BIN)/shopfluence eval --out reports/eval

bench: install
	$(BIN)/python bench/look_bench.py

lint: install
	$(BIN)/ruff check pipeline detectors indexes tests bench

clean:
	rm -rf $(VENV) $(INDEX) reports *.egg-info
