# One command each: `make demo` and `make test` set everything up on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench bench-postgres clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/durably demo

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_sagas.py
	$(BIN)/python bench/bench_wakeup.py
	$(BIN)/python bench/bench_claims.py
	$(BIN)/python bench/bench_claim_scale.py
	$(BIN)/python bench/bench_import.py
	$(BIN)/python bench/bench_scale.py

# Not part of `make bench`: needs a PostgreSQL server (DURABLY_BENCH_POSTGRES_URL, default
# postgresql://postgres@127.0.0.1:5432/postgres) and installs pgqueuer and procrastinate into
# .bench-venv. Takes about half an hour; BENCH_QUEUES_ARGS=--quick for a smoke run.
bench-postgres: $(STAMP)
	$(BIN)/python bench/bench_queues.py $(BENCH_QUEUES_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
