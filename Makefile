# rtdecode — every target installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export LSLAPICFG := $(CURDIR)/rtdecode/lsl/lsl_local.cfg

.PHONY: install test demo bench lint models clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install only when the project metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	@bash scripts/pytest.sh

demo: install
	$(VENV)/bin/rtdecode --lsl-local demo

bench: install
	$(PY) bench/ingest.py

lint: install
	$(VENV)/bin/ruff check rtdecode tests bench

clean:
	rm -rf $(VENV) build *.egg-info
