# bcvae — `make help` lists the targets.
# Uses ./.venv by default; inside another environment (e.g. an activated conda
# env made from environment.yml) run `make <target> PYTHON=python`.
VENV    := .venv
PEERS   := .venv-peers
PYTHON  ?= $(VENV)/bin/python
# CPU wheel by default; on a CUDA machine e.g.
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH   ?= torch==2.13.0
EXP     ?= smoke
ARGS    ?=
RUN     ?= runs/smoke/fold0
SWEEP   ?= capacity_gamma
BUDGET  ?= cpu
FRESH   ?=
PYTEST  ?=

FRESH_FLAG := $(if $(FRESH),--fresh,)

ifeq ($(PYTHON),$(VENV)/bin/python)
DEPS := $(VENV)/.installed
else
DEPS := check-python
endif

.DEFAULT_GOAL := help
.PHONY: help install check-python data train cv eval sweep plots bench bench-peers bench-gpu reproduce plateau test test-slow test-all clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: EXP=$(EXP) ARGS='key=value ...' RUN=$(RUN) SWEEP=$(SWEEP) FRESH=1 PYTHON=$(PYTHON)"

install: $(DEPS)  ## create .venv and install bcvae with its dependencies

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

check-python:
	@$(PYTHON) -c "import bcvae, torch" || { echo "bcvae is not installed for $(PYTHON): run '$(PYTHON) -m pip install -e .[test]'"; exit 1; }

data: $(DEPS)  ## build the HDF5 fold cache of EXP's data settings
	$(PYTHON) -m bcvae data build $(EXP) $(ARGS)

train: $(DEPS)  ## train (or resume) EXP on one fold: make train EXP=capacity25 ARGS="seed=2"
	$(PYTHON) -m bcvae train $(EXP) $(ARGS) $(FRESH_FLAG)

cv: $(DEPS)  ## 10-fold cross-validation of EXP, then mean ± std over folds
	$(PYTHON) -m bcvae cv $(EXP) $(ARGS) $(FRESH_FLAG)

eval: $(DEPS)  ## disentanglement metrics of RUN (a run directory or checkpoint)
	$(PYTHON) -m bcvae eval $(RUN) $(ARGS)

sweep: $(DEPS)  ## run experiments/sweeps/SWEEP.yaml locally (online: wandb sweep + wandb agent)
	$(PYTHON) -m bcvae sweep $(SWEEP) $(ARGS)

plots: $(DEPS)  ## write PNG figures of RUN next to it
	$(PYTHON) -m bcvae plots $(RUN)

bench: $(DEPS)  ## throughput / memory benchmarks -> benchmarks/results/latest.json
	$(PYTHON) benchmarks/run.py $(ARGS)

bench-peers: $(PEERS)/.installed  ## bcvae vs disent 0.8.0, in its own .venv-peers -> benchmarks/results/peers.json
	$(PEERS)/bin/python benchmarks/peers.py $(ARGS)

# The peer library and Lightning live in their own environment, never in .venv.
$(PEERS)/.installed: benchmarks/requirements-peers.txt pyproject.toml
	test -x $(PEERS)/bin/python || python3 -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet $(TORCH)
	$(PEERS)/bin/python -m pip install --quiet -r benchmarks/requirements-peers.txt
	$(PEERS)/bin/python -m pip install --quiet -e .
	touch $@

bench-gpu:  ## the GPU check on a CUDA machine (benchmarks/gpu.sh): ARGS="--steps 3000 --dry-run"
	bash benchmarks/gpu.sh $(if $(filter command line,$(origin PYTHON)),--python $(PYTHON)) $(ARGS)

reproduce: $(DEPS)  ## train + evaluate the results table: BUDGET=cpu|full ARGS="--seeds 0,1,2 --jobs 2"
	$(PYTHON) -m bcvae reproduce --budget $(BUDGET) $(ARGS)

plateau: $(DEPS)  ## the capacity objective's mean-image plateau study -> results/plateau.md: ARGS="--seeds 0,1 --jobs 2"
	$(PYTHON) -m bcvae plateau $(ARGS)

test: $(DEPS)  ## the default test suite (fast)
	$(PYTHON) -m pytest -m "not slow" $(PYTEST)

test-slow: $(DEPS)  ## the long tests (kill/resume matrix, full dataset, DDP)
	$(PYTHON) -m pytest -m slow $(PYTEST)

test-all: $(DEPS)  ## every test
	$(PYTHON) -m pytest $(PYTEST)

clean:  ## remove caches of Python and pytest (never runs/ or data/)
	rm -rf .pytest_cache **/__pycache__
