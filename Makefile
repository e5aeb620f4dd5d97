# mu: two commands on a fresh machine.
#   make demo   frames to Y4M, denoised through the relay, to a VP9 video locally
#               (emulator + moto S3 + static binaries)
#   make test   lint, type-check and run the whole test suite
# Both create .venv, install the project and build the static binaries (png2y4m, denoise,
# vpxenc) when needed.
# Missing system packages (C compiler, libpng/zlib static libraries, valgrind) are installed
# with apt-get when running as root; otherwise the command to run is printed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BINARY := function/png2y4m/png2y4m
SYSPKGS := gcc make libc6-dev libpng-dev zlib1g-dev libdeflate-dev valgrind libvpx-dev vpx-tools bubblewrap

.PHONY: all test demo lint type pytest sysdeps venv binary tox coverage clean

all: test

sysdeps:
	@missing=""; for p in $(SYSPKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "note: no apt-get; make sure these are installed:$$missing"; \
	  elif [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    (apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1 || \
	     (apt-get update >/dev/null && apt-get install -y --no-install-recommends $$missing >/dev/null)) \
	     || { echo "apt-get failed for:$$missing"; exit 1; }; \
	  else \
	    echo "missing system packages; run: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,plot]'
	@touch $(STAMP)

venv: $(STAMP)

binary: sysdeps
	$(MAKE) -C function/png2y4m
	$(MAKE) -C function/denoise
	$(MAKE) -C function/vpxenc

lint: $(STAMP)
	$(VENV)/bin/ruff check mu backends emulator tests bench function/lambda_function.py

type: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) binary
	@# exit status 5 means no test was collected: not a failure of the tree
	$(VENV)/bin/pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: sysdeps $(STAMP) binary lint type pytest

demo: sysdeps $(STAMP) binary
	$(VENV)/bin/mu demo

tox: $(STAMP)
	$(VENV)/bin/tox -p

# Line coverage of the pure core by its unit tests (the bar is 95 %).
coverage: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit --cov=mu.protocol --cov=mu.states --cov=mu.actor \
	    --cov-report=term-missing --cov-fail-under=95

clean:
	$(MAKE) -C function/png2y4m clean
	$(MAKE) -C function/denoise clean
	$(MAKE) -C function/vpxenc clean
	rm -rf .tox build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-out
