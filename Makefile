# ringfence — the two quick-start commands live here.
#   make demo   set up .venv and run the seeded demo on the embedded default
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)
	@command -v gpg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq gnupg)

demo: setup
	$(VENV)/bin/ringfence demo --data ./ringfence-data/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/ledger.py

clean:
	rm -rf $(VENV) ringfence-data .pytest_cache .hypothesis
