PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/mnist_demo.py $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir site

test: lint docs
	$(PY) -m pytest -q -ra -n auto --maxprocesses 4 --dist loadfile

clean:
	rm -rf $(VENV) lightning_logs i2x_demo .pytest_cache site
