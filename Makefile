# The two commands a user needs: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install clean sandbox-deps browser-deps

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $(STAMP)

# The test extra adds pytest and torch (the parity tests' reference); the demo does not need them.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(TEST_STAMP)

install: $(STAMP)

# glibc's malloc settings for CPU runs, `TUNABLES` in codevision_jax/runtime/host_malloc.py: XLA's
# step buffers stay in the heap instead of being mapped and faulted in again every step.
CPU_MALLOC := GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

demo: $(STAMP)
	$(CPU_MALLOC) $(PY) -m launch.demo --config=configs/tiny.py

# OS packages for the executor's sandbox (bubblewrap; libseccomp for pyseccomp). Idempotent: apt runs
# only when something is missing; without apt the executor still runs, logging the inactive layers.
sandbox-deps:
	@if command -v bwrap >/dev/null 2>&1 && { ldconfig -p 2>/dev/null | grep -q libseccomp.so.2 || ls /usr/lib/*/libseccomp.so.2 >/dev/null 2>&1; }; then \
	  echo "sandbox-deps: bubblewrap and libseccomp are installed"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq bubblewrap libseccomp2; } \
	    || echo "sandbox-deps: apt-get failed; the executor will run with fewer isolation layers (docs/executor.md)"; \
	else \
	  echo "sandbox-deps: no apt-get here; install bubblewrap and libseccomp2 yourself, or the executor runs with fewer isolation layers (docs/executor.md)"; \
	fi

# A headless Chromium for the report viewer's browser tests (tests/test_viewer.py). Idempotent: apt
# runs only when no Chromium is on PATH; without one those tests fail, naming this target.
BROWSERS := chromium-headless-shell chromium chromium-browser google-chrome
browser-deps:
	@found=$$(for b in $(BROWSERS); do command -v $$b 2>/dev/null && break; done); \
	if [ -n "$$found" ]; then \
	  echo "browser-deps: headless Chromium at $$found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium-headless-shell; } \
	    || echo "browser-deps: apt-get failed; install chromium-headless-shell (or chromium) yourself, or the viewer's browser tests fail"; \
	else \
	  echo "browser-deps: no apt-get here; put a headless Chromium on PATH ($(BROWSERS)), or the viewer's browser tests fail"; \
	fi

# The linter and the formatter's check first (settings in pyproject.toml): a finding fails the run
# before the suite starts. The suite runs on two workers (pytest-xdist; a test file stays on one
# worker, so its module fixtures are built once; files start in the order tests/conftest.py gives,
# the longest first) and prints its slowest tests.
test: $(TEST_STAMP) sandbox-deps browser-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

clean:
	rm -rf $(VENV) *.egg-info
