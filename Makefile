# ringfence — the two quick-start commands live here.
#   make demo   set up .venv and run the seeded demo on the embedded default
#   make test   set up .venv, lint (ruff, mypy) and run the whole test suite
#   make lint   ruff over src, tests and bench; mypy (pyproject.toml: strict on engine, ledger,
#               trading, money)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo lint test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the project needs: libsecp256k1 (python-bitcointx, custody), SoftHSM2 (the
# PKCS#11 token for keys), GnuPG (identity PGP), Chromium (browser tests; never a
# downloaded browser). Installed only when missing, in one apt run.
APT_PACKAGES := libsecp256k1-1 softhsm2 gnupg chromium

setup: $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

demo: setup
	$(VENV)/bin/ringfence demo --data ./ringfence-data/demo

# Each command fails the run (make stops at the first that exits non-zero).
lint: setup
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/ledger.py

clean:
	rm -rf $(VENV) ringfence-data .pytest_cache .hypothesis .mypy_cache .ruff_cache
