# ringfence — the quick-start commands live here.
#   make demo        set up .venv with the runtime packages only and run the seeded demo
#   make serve-demo  the same set-up, then the exchange with demo markets on http://localhost:8000/
#   make test        set up .venv with the test tools and the test machine's Debian packages
#                    (Chromium for the browser tests among them), lint (ruff, mypy), run every test,
#                    then the tests marked `store` again on PostgreSQL
#   make test-postgresql  the same, every test server's identity and read models on PostgreSQL
#   make lint        ruff over src, tests and bench; mypy (pyproject.toml: strict on engine, ledger,
#                    trading, money)
#   make native      compile the matching hot path with mypyc in place (run by the set-ups above;
#                    without a C compiler it warns and the exchange runs the same code as pure Python)
# The demo needs no Debian package beyond Python itself: coincurve ships its own libsecp256k1,
# embit falls back to its pure-Python one, GnuPG is loaded only for PGP features and SoftHSM only
# by the HSM signer, none of which the demo uses; no browser, no browser libraries.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-dev
# The compiled hot path (src/ringfence/native.py: COMPILED) and the stamp its build writes.
NATIVE_SOURCES := $(addprefix src/ringfence/trading/,book.py matching.py orders.py state.py admin.py) src/ringfence/derivatives/contract.py src/ringfence/derivatives/margin.py src/ringfence/derivatives/dstate.py src/ringfence/ledger/account.py src/ringfence/ledger/ledger.py src/ringfence/ledger/digest.py src/ringfence/native.py
NATIVE_STAMP := src/ringfence/trading/_native.json

.PHONY: setup setup-demo demo serve-demo lint test test-postgresql bench clean native

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Runtime packages only (pyproject.toml `dependencies`), plus the `native` extra (mypy, whose mypyc
# compiles the hot path): what `ringfence demo` and `ringfence serve` need.
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[native]'
	touch $(DEMO_STAMP)

# Runtime plus the `dev` extra: pytest, hypothesis, Playwright (its Python package; the browser
# is Debian's chromium below, never a downloaded one), ccxt, linters.
$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev,native]'
	touch $(TEST_STAMP) $(DEMO_STAMP)

# Debian packages the tests need: libsecp256k1 (python-bitcointx, custody), SoftHSM2 (the PKCS#11
# token for keys), GnuPG (identity PGP), Chromium (browser tests; never a downloaded browser).
# Installed only when missing, in one apt run.
TEST_APT_PACKAGES := libsecp256k1-1 softhsm2 gnupg chromium

# Compile the hot path in place (beside the sources; *.so and the stamp are git-ignored). Rebuilt
# when a compiled source changes. Never fails the set-up: with no compiler or no mypyc it prints a
# warning and the exchange runs pure Python (an import refuses a stale build the same way).
$(NATIVE_STAMP): $(NATIVE_SOURCES) | $(DEMO_STAMP)
	$(PY) -m ringfence.native build

native: $(DEMO_STAMP)
	$(PY) -m ringfence.native build

setup-demo: $(DEMO_STAMP) $(NATIVE_STAMP)

setup: $(TEST_STAMP) $(NATIVE_STAMP)
	@missing=""; for p in $(TEST_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

demo: setup-demo
	$(VENV)/bin/ringfence demo --data ./ringfence-data/demo

serve-demo: setup-demo
	$(VENV)/bin/ringfence serve --demo --data ./ringfence-data/serve --port 8000

# Each command fails the run (make stops at the first that exits non-zero).
lint: setup
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy

# Two workers, a test file at a time on each: most tests wait on live servers, so two cores keep busy.
# Bytecode for the sources first: the suite starts a few hundred `ringfence` processes (servers,
# signers, CLI calls), and where PYTHONDONTWRITEBYTECODE is set each would compile every module again.
# Three workers on two cores: most live tests wait (blocks, mail, TOTP steps, confirmations), so a third
# worker fills the idle time (measured: 13 min 56 s of pytest against 19 min 45 s with two, same load).
# --no-loadscope-reorder: the files start in the order tests/conftest.py gives them, the longest first
# (xdist's own order, most tests first, left minutes-long files of few tests for the end).
# Then the tests marked `store` (they exercise the SQL store: identity through a live server, the monitoring
# read models, staff logins; tests/pgtest.py) run again on the PostgreSQL production profile of this
# machine, each server and each store in a database of its own. No PostgreSQL fails that pass; it is never
# skipped. The identity tests run on both stores in the first pass already (tests/identity/conftest.py).
STORE_TESTS = $(shell grep -rlE '^(pytestmark = |@)pytest\.mark\.store' tests --include='test_*.py' | sort)

test: lint
	$(PY) -m compileall -q src >/dev/null
	$(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=20
	RINGFENCE_TEST_PROFILE=postgresql $(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder -m store $(STORE_TESTS)

# The same suite on the PostgreSQL production profile: every server the tests start keeps its
# identity and read models in a fresh database on the machine's PostgreSQL (tests/pgtest.py).
test-postgresql: lint
	$(PY) -m compileall -q src >/dev/null
	RINGFENCE_TEST_PROFILE=postgresql $(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder

bench: setup
	$(PY) bench/ledger.py

clean:
	rm -rf $(VENV) ringfence-data .pytest_cache .hypothesis .mypy_cache .ruff_cache
	rm -f src/ringfence/trading/*.so $(NATIVE_STAMP)
