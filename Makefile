# Two commands for a fresh machine:  make demo  |  make test   (both set everything up first)
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# Pretrained base weights for offline machines: used when present, never committed (see README).
SHARED_WEIGHTS := $(abspath ../shared/weights/mobilenet_v2_1.0_224_no_top.h5)
ifneq ($(wildcard $(SHARED_WEIGHTS)),)
export FTUNE_WEIGHTS ?= $(SHARED_WEIGHTS)
endif
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

# The TFX 1.16 stack installs only on Python 3.10. Looks on PATH, then in pyenv's versions.
define FIND_PYTHON310
for c in "$${PYTHON310:-}" python3.10 \
         $$(command -v pyenv >/dev/null 2>&1 && ls -d "$$(pyenv root)"/versions/3.10*/bin/python3.10 2>/dev/null) \
         $$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.10*/bin/python3.10 2>/dev/null); do \
  if [ -n "$$c" ] && "$$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then \
    echo "$$c"; break; fi; \
done
endef

.PHONY: help setup demo test test-fast lint docs docs-pictures clean
help:
	@echo "make demo   set up, then run the whole pipeline on generated sample data"
	@echo "make test   set up, then run the test suite"
	@echo "make test-fast  the tests not marked slow (no whole-pipeline runs): minutes, for the edit loop"
	@echo "make lint   ruff (style, errors) and lint-imports (the layer contracts in pyproject.toml)"
	@echo "make docs   regenerate the reference pages (tools/gen_docs.py), then build the docs site into site/"
	@echo "make docs-pictures  re-take the docs' screenshots (docs/images/) from two small runs; needs Chromium"
	@echo "make setup  create $(VENV) (Python 3.10) and install the project with constraints.txt (idempotent)"

setup: $(STAMP)

# Re-installs only when pyproject.toml or constraints.txt change, so a second `make setup` takes seconds.
$(STAMP): pyproject.toml constraints.txt
	@if [ ! -x $(PY) ]; then \
	  py="$$($(FIND_PYTHON310))"; \
	  if [ -z "$$py" ]; then \
	    echo "error: Python 3.10 not found. TFX 1.16 needs it: install it (e.g. 'pyenv install 3.10.13')" \
	         "or set PYTHON310=/path/to/python3.10." >&2; exit 1; fi; \
	  echo "[setup] creating $(VENV) with $$py"; \
	  "$$py" -m venv $(VENV); \
	fi
	@echo "[setup] installing the project and its pinned dependencies (constraints.txt)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)
	@echo "[setup] done"

demo: setup
	$(VENV)/bin/ftune run

# Two workers: a pipeline run keeps about one of the two cores busy, so the suite takes ~0.55x the time of one
# worker (measured in tests/README.md). Each test module stays on one worker (tests/conftest.py schedules them).
XDIST := -n 2

test: setup
	$(PY) -m pytest $(XDIST)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# The reference pages are generated from the code (settings, CLI parser, CLI error battery), then the site is built;
# --strict turns a broken link, a missing anchor or a page left out of the nav into an error.
docs: setup
	$(PY) tools/gen_docs.py
	$(VENV)/bin/mkdocs build --strict --quiet

# The report, summary and versions pictures in docs/images/: two small runs on sample data, screenshots by headless
# Chromium (apt-get install -y chromium; not a dependency of ftune). About 4 minutes; on demand, not part of
# `make docs` or CI: re-take them when the report or the console output changes, and commit the PNGs.
docs-pictures: setup
	$(PY) tools/capture_docs_pictures.py

clean:
	rm -rf outputs site .pytest_cache
