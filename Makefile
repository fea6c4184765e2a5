# Everything starts from a bare Python: `make test` and `make demo` build .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-slow demo lint clean mutation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Mutation testing of the formula modules (docs/testing.md); not part of `make test`. Results are kept
# in mutants/ and reused: a second run only retries what changed. MUTANTS narrows it, e.g.
# `make mutation MUTANTS='whycam.metrics.*'`.
MUTANTS ?= whycam.metrics.* whycam.methods.* whycam.reference.*
mutation: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/python scripts/mutation_score.py

demo: $(STAMP)
	$(BIN)/whycam demo --out out/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache mutants
