# rtdecode — every target installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export LSLAPICFG := $(CURDIR)/rtdecode/lsl/lsl_local.cfg

.PHONY: install test demo bench docs lint models wheel clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install only when the project metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The image world's Debian assets (Noto emoji, Tux Paint photos) go to a per-user cache.
install: $(STAMP)
	@bash rtdecode/images/install_world_assets.sh

test: install
	@bash scripts/pytest.sh

demo: install
	$(VENV)/bin/rtdecode --lsl-local demo

bench: install
	$(PY) bench/ingest.py
	$(PY) bench/preprocess.py
	$(PY) bench/encoder.py
	$(PY) bench/retrieval.py
	$(PY) bench/decoder.py
	$(PY) bench/latency.py

# The tables of figures in docs/ from their JSON (bench/results, docs/results); the
# standard library is all it needs.
docs: | $(PY)
	$(PY) scripts/make_docs.py

# The simulated subject (data/sim, about a minute) and the bundled demo models, made with
# the project's own commands. The decoder takes ~25 min on 2 cores, the encoder ~5 min.
data/sim/replay_raw.fif: | $(STAMP)
	$(VENV)/bin/rtdecode --lsl-local simulate --out data/sim --seed 0

models: install data/sim/replay_raw.fif
	$(VENV)/bin/rtdecode train-decoder --gallery data/sim/images --out models/demo/decoder
	$(VENV)/bin/rtdecode train --data data/sim --out runs/demo-encoder --config models/recipes/demo.toml
	mkdir -p models/demo/encoder && cp runs/demo-encoder/config.json runs/demo-encoder/model.safetensors models/demo/encoder/

# The wheel and the sdist (in dist/), with the demo models and the viewer inside;
# scripts/wheel_smoke.sh installs the wheel into a new virtualenv and runs the demo.
wheel: install
	$(PY) -m build --outdir dist .

lint: install
	$(VENV)/bin/ruff check rtdecode tests bench

clean:
	rm -rf $(VENV) build dist *.egg-info
