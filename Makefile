# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates or reuses .venv and installs what it needs; nothing else is required.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check lint setup dot browser clean

setup: $(STAMP) dot

$(STAMP): pyproject.toml setup.py $(wildcard depengine/*.c depengine/*.h ops/*.c)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,gpu,mpi]'
	@touch $(STAMP)

# graphviz's `dot` renders dependency graphs; only rendering needs it.
dot:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq graphviz >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq graphviz >/dev/null 2>&1)); \
	  fi; }
	@command -v dot >/dev/null 2>&1 || { \
	  echo "graphviz's 'dot' program is missing: install the system package 'graphviz'" \
	       "(Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz)"; exit 1; }

# headless Chromium opens the HTML report in the tests; where it cannot be installed they skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)); \
	  fi; }
	@command -v chromium >/dev/null 2>&1 || \
	  echo "note: Chromium is missing, so the report's browser tests will skip" \
	       "(Debian/Ubuntu: sudo apt-get install chromium)"

demo: setup
	$(VENV)/bin/depengine demo

# The suite runs twice: on the compiled hot path, then on the pure-Python reference.
test: setup browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q
	DEPENGINE_PURE_PYTHON=1 $(PY) -m pytest -q

bench: setup
	$(VENV)/bin/depengine bench

gpu-check: setup
	$(PY) -m bench.gpu_check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
