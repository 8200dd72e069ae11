# latent-combo. Every target that runs code depends on `setup`, which is idempotent and fast once done.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
DEBS := libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglib2.0-0

ENV ?= walker-walk
# Sawyer's image results in the paper are on medium-expert and expert. Walker's default is medium: 20 medium
# episodes are enough to learn to walk from in minutes; 20 of the replay's are not (docs/benchmarks.md).
DATASET ?= $(if $(filter sawyer%,$(ENV)),medium-expert,medium)
ALGO ?= combo
PRESET ?= cpu
SEED ?= 0
EPISODES ?= 200
WORKERS ?= $(shell nproc)
ARGS ?=

.PHONY: setup system-deps test test-all lint train-latent train-behaviour collect-walker collect-sawyer \
        tensorboard bench bench-gpu bench-quality clean

setup: system-deps $(VENV_STAMP)

# Offscreen MuJoCo rendering needs Mesa (EGL, with OSMesa as fallback). Installed when missing if we
# are root; otherwise the exact apt-get line is printed.
system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || { echo "apt-get failed: install$$missing by hand"; exit 1; }; \
	  else echo "missing Debian packages; run: sudo apt-get install -y$$missing"; exit 1; fi; fi

$(VENV_STAMP): pyproject.toml
	@test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -e '.[dev,sweep,interop,reference]' 2>&1 | grep -v "^WARNING: Location" || true
	@# d3rlpy's wheel pins gymnasium 1.0.0, Meta-World needs >= 1.1: d3rlpy without its deps (the `reference` extra has them).
	.venv/bin/pip install -q --disable-pip-version-check --no-deps d3rlpy==2.8.1 2>&1 | grep -v "^WARNING: Location" || true
	@# d3rlpy is looked up, not imported: importing it imports gym 0.26, which prints a page of deprecation notice.
	@.venv/bin/python -c "import importlib.util, torch, dm_control, metaworld, latent_combo; \
	  assert importlib.util.find_spec('d3rlpy'), 'd3rlpy missing'" && touch $(VENV_STAMP)

test: setup
	$(PY) -m pytest -q -x

test-all: setup
	$(PY) -m pytest -q -m "" -x

lint: setup
	.venv/bin/ruff check latent_combo data_collection tests bench

# The main job end to end: world model, latent transitions, COMBO, evaluation in the simulator.
train-latent: setup
	.venv/bin/latent-combo train --env $(ENV) --dataset $(DATASET) --algo $(ALGO) --preset $(PRESET) \
	  --seed $(SEED) $(ARGS)

# Walker behaviour policies from scratch: one SAC run for the expert (an update per env step), one that
# updates every 5th step, for medium and the medium-replay experience (a slower learner gathers more
# episodes before it reaches medium), then pick and ship. Sawyer's behaviour is Meta-World's scripted
# policy: nothing to train.
train-behaviour: setup
	@case "$(ENV)" in sawyer*) echo "sawyer datasets use Meta-World's scripted policy: nothing to train"; \
	  exit 1;; esac
	$(PY) -m data_collection.sac --env $(ENV) --steps 80000 --eval-every 10000 --out runs/behaviour/$(ENV)
	$(PY) -m data_collection.sac --env $(ENV) --steps 200000 --eval-every 5000 --update-every 5 --seed 2 \
	  --out runs/behaviour/$(ENV)-replay
	$(PY) -m data_collection.ship --env $(ENV) --ladder runs/behaviour/$(ENV)-replay \
	  --expert-ladder runs/behaviour/$(ENV)

collect-walker: setup
	for f in medium expert medium-replay medium-expert; do \
	  .venv/bin/latent-combo collect --env walker-walk --flavour $$f --episodes $(EPISODES) \
	    --workers $(WORKERS) || exit 1; done
	for f in medium expert medium-replay medium-expert; do .venv/bin/latent-combo info data/walker-walk/$$f; done

collect-sawyer: setup
	for f in medium expert medium-replay medium-expert; do \
	  .venv/bin/latent-combo collect --env sawyer-door --flavour $$f --episodes $(EPISODES) \
	    --workers $(WORKERS) || exit 1; done
	for f in medium expert medium-replay medium-expert; do .venv/bin/latent-combo info data/sawyer-door/$$f; done
	# The generalisation task (paper Table 1): the medium-expert door-opening data, rewarded for a closed door.
	.venv/bin/latent-combo collect --env sawyer-door-close --flavour medium-expert --episodes $(EPISODES) \
	  --workers $(WORKERS)
	.venv/bin/latent-combo info data/sawyer-door-close/medium-expert

# TensorBoard serves this machine only: `make tensorboard TB_HOST=0.0.0.0` exposes it to the network (every
# interface; anyone who can reach the port reads the runs).
TB_HOST ?= localhost
tensorboard: setup
	.venv/bin/tensorboard --logdir runs --host $(TB_HOST)

bench: setup
	$(PY) bench/world_model.py
	$(PY) bench/agent.py
	$(PY) bench/collect.py

# Paper-scale per-update times on CUDA and the projected wall time of a full walker run (explains itself
# and exits 0 without a GPU).
bench-gpu: setup
	$(PY) bench/gpu.py $(ARGS)

bench-quality: setup
	$(PY) bench/quality.py $(ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
