# annealvi: two commands do all set-up on a fresh machine (Python 3.11, no GPU):
#   make book   -> creates .venv if missing, installs pinned deps, executes all chapters, writes _build/html
#   make test   -> same bootstrap, then runs the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
LOCK := requirements.lock
PIP_VERSION := 26.3
# the install stamp depends on pyproject and the lock, so a change of pins reinstalls
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha256sum | cut -c1-12)
PRESET ?= $(or $(ANNEALVI_PRESET),book)
BUILD_DIR ?= _build

.PHONY: book test test-fast figures bench vendor clean env lock

env: $(STAMP)

# every package from the lock (exact versions, hashes checked), then the project itself without
# resolving anything
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q pip==$(PIP_VERSION)
	$(VPY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

# regenerate requirements.lock from pyproject's pins (book + dev extras, every platform, Python 3.11)
lock:
	@test -x $(VENV)/bin/uv || { test -x $(VPY) || $(PYTHON) -m venv $(VENV); $(VPY) -m pip install -q uv==0.13.9; }
	$(VENV)/bin/uv pip compile pyproject.toml --extra book --extra dev --universal \
	  --python-version 3.11 --generate-hashes --custom-compile-command "make lock" -o $(LOCK)

book: $(STAMP)
	ANNEALVI_PRESET=$(PRESET) $(VPY) scripts/build_book.py --build-dir $(BUILD_DIR)

test: $(STAMP)
	$(VPY) -m pytest -q -ra

test-fast: $(STAMP)
	$(VPY) -m pytest -q -ra -m "not slow and not browser"

figures: $(STAMP)
	$(VPY) -m annealvi_lib figures --preset $(PRESET)

# offline web assets (MathJax) for the site; build_book.py also does this before every build
vendor: $(STAMP)
	$(VPY) scripts/vendor_assets.py

bench: $(STAMP)
	$(VPY) benchmarks/bench_gmm.py --out results/bench_gmm.json
	$(VPY) benchmarks/bench_realnvp.py --out results/bench_realnvp.json

clean:
	rm -rf _build figures notebooks/_figure_data .pytest_cache book/_vendor
