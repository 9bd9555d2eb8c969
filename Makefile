# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
CATALOG ?= $(DATA)/clothing-dataset-small/test
PHOTO ?= $(DATA)/people/ochuman_000817.jpg
INDEX ?= demo-index

.PHONY: install browser demo serve test eval bench lint clean
PORT ?= 8000
KEYS ?= demo-key

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Debian's chromium drives the upload-page test (Playwright uses it; no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get install -y -q --no-install-recommends chromium >/dev/null \
	  || echo "could not install chromium: the browser test will be skipped"; }

# Build a small real catalog index from CATALOG, serve it with gunicorn, and query it over HTTP.
demo: install
	$(BIN)/shopfluence weights check
	$(BIN)/shopfluence index $(CATALOG) --out $(INDEX)
	$(BIN)/shopfluence look $(PHOTO) --index $(INDEX)
	$(BIN)/python bench/demo_http.py --index $(INDEX) --photo $(PHOTO)

# The API on http://127.0.0.1:$(PORT)/ (upload page at /), writes allowed with KEYS.
serve: install
	SHOPFLUENCE_INDEX=$(INDEX) SHOPFLUENCE_BIND=127.0.0.1:$(PORT) SHOPFLUENCE_API_KEYS=$(KEYS) \
	  $(BIN)/gunicorn -c api/gunicorn.conf.py api.wsgi:app

test: install browser
	$(BIN)/python -m pytest -q -x tests

eval: install
	$(BIN)/shopfluence eval --out reports/eval

bench: install
	$(BIN)/python bench/look_bench.py
	$(BIN)/python bench/index_bench.py --n 200000
	$(BIN)/python bench/load_bench.py
	$(BIN)/python bench/ingest_bench.py

lint: install
	$(BIN)/ruff check pipeline detectors indexes api tests bench

clean:
	rm -rf $(VENV) $(INDEX) reports *.egg-info
