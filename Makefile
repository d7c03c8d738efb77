# Keel developer entry points. On a fresh clone: `make run` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOTSTRAP ?= $(or $(shell command -v python3.11),python3)
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
OIDC := tests/oidc
# Only the folders that exist (bench/ and gateway/ arrive with later changes).
TYPED_DIRS := $(wildcard services gateway tests bench tools deploy)
BENCH_SCRIPTS := $(wildcard bench/*.py)

.PHONY: help install protos lint test run bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

install: $(STAMP) $(if $(wildcard $(OIDC)/package-lock.json),$(OIDC)/node_modules/.installed) ## venv + locked deps (+ npm test deps)

$(PY):
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)

$(STAMP): requirements.lock pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --quiet -p $(PY) -r requirements.lock -e .
	touch $@

$(OIDC)/node_modules/.installed: $(OIDC)/package.json $(OIDC)/package-lock.json
	npm ci --prefix $(OIDC) --no-audit --no-fund
	touch $@

protos: $(STAMP) ## regenerate keel/ from protos/
	$(PY) tools/gen_protos.py

lint: $(STAMP) ## ruff, mypy --strict, buf lint, generated-code freshness, deploy YAML
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(TYPED_DIRS)
	$(PY) tools/buf_lint.py $(if $(BUF_AGAINST),--against-ref $(BUF_AGAINST))
	$(PY) tools/check_generated.py
	$(PY) deploy/validate.py

test: install ## the whole test suite (PYTEST_ADDOPTS passes through)
	$(VENV)/bin/pytest -q tests

run: install ## the whole mesh on localhost (python -m services.mesh)
	$(PY) -m services.mesh

bench: install ## every bench/*.py with its default arguments
	@$(if $(BENCH_SCRIPTS),,echo "no bench/*.py scripts yet")
	@for script in $(BENCH_SCRIPTS); do echo "== $$script"; $(PY) "$$script"; done

clean: ## remove the venv, build output, caches and node_modules (keeps .keel-data)
	rm -rf $(VENV) .build .mypy_cache .ruff_cache .pytest_cache $(OIDC)/node_modules
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
