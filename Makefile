# Two commands on a fresh machine: `make demo` and `make test` (each creates the venv if needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := infra/constraints-cpu.txt
PIP := set -o pipefail; $(PY) -m pip install -q
# pip.conf on these machines names index folders that may not exist; drop that noise only.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
export PYTHONUNBUFFERED := 1
STAGES := ingest dedup pretrain finetune sweep report

.PHONY: setup test test-fast test-slow chaos demo demo-real demo-data real-data bench timm bench-timm gpu-check gpu-check-dry gpu-wheels lint format clean head head-stop \
	$(addprefix submit-,$(STAGES))

setup: $(STAMP)

# Re-installs only when the declared dependencies change.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel $(QUIET_PIP)
	$(PIP) -c $(CONSTRAINTS) torch $(QUIET_PIP)
	$(PIP) -c $(CONSTRAINTS) -e '.[dev]' $(QUIET_PIP)
	@touch $(STAMP)

# The default suite: every real end-to-end path (Ray + DeepSpeed runs, kill -9 and resume, the
# demo chain at a reduced size); the slow group (big models, extra ZeRO stages) runs alone.
test: setup timm
	$(PY) -m pytest -q -m "not slow" --durations=25

test-fast: setup timm
	$(PY) -m pytest -q -m "not slow" tests/unit

test-slow: setup timm
	$(PY) -m pytest -q -m slow

# The long variants of the reliability suite: injected worker kills mid-step and mid-checkpoint
# write, a whole chain of stage jobs on gs:// behind a fault-injecting proxy, lost Ray nodes and
# a cut network link (nodes in network namespaces: root), and NFNet-F7+ through the full stack
# (~10 min, ~20 GiB of memory). About 30 minutes in all on 2 cores.
chaos: setup
	$(PY) -m pytest -q -m chaos

demo: setup
	$(PY) jobs/demo.py

demo-data: setup
	$(PY) jobs/make_demo_data.py

# The same chain on real photos: Fashion-MNIST from Debian's package (apt-get download, no root).
demo-real: setup
	$(PY) jobs/demo.py --config configs/fashion_mnist.yaml

real-data: setup
	$(PY) jobs/make_real_data.py

# One stage as a Ray job on a running cluster (infra/README.md: from `ray up` on), e.g.
#   make submit-pretrain ARGS="--config configs/pretrain/nfnet_f7plus.yaml run.dir=gs://B/runs/f7p"
#   make submit-ingest ARGS="input=gs://B/raw/pool output=gs://B/shards/pool prefix=pool"
# RAY_DASHBOARD is the cluster's job API (`ray dashboard infra/ray/cluster-gcp.yaml` forwards it).
RAY_DASHBOARD ?= http://127.0.0.1:8265
$(addprefix submit-,$(STAGES)): submit-%: setup
	RAY_AUTH_MODE=token $(VENV)/bin/ray job submit --address $(RAY_DASHBOARD) \
		--runtime-env infra/runtime_env.yaml -- python jobs/$*.py $(ARGS)

# A Ray head on this machine (loopback) to `ray job submit` to: started from the project's venv,
# so its jobs' `python` is the venv's, with the token auth Ray 2.60 wants. It prints the lines
# to run next (README, "First job on a local cluster"); `make head-stop` stops it.
HEAD_PORT ?= 6379
DASHBOARD_PORT ?= 8265
HEAD_CPUS ?=
LOCAL_RAY := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" RAY_AUTH_MODE=token $(VENV)/bin/ray
head: setup
	@$(LOCAL_RAY) get-auth-token --generate > /dev/null
	@$(LOCAL_RAY) start --head --node-ip-address=127.0.0.1 --port=$(HEAD_PORT) \
		--dashboard-host=127.0.0.1 --dashboard-port=$(DASHBOARD_PORT) --include-dashboard=true \
		$(if $(HEAD_CPUS),--num-cpus=$(HEAD_CPUS)) > /dev/null
	@echo "Ray head on 127.0.0.1:$(HEAD_PORT); its jobs run $(VENV)/bin/python. In your shell:"
	@echo "  export RAY_ADDRESS=http://127.0.0.1:$(DASHBOARD_PORT) RAY_AUTH_MODE=token"
	@echo "  $(VENV)/bin/ray job submit --working-dir . -- python jobs/pretrain.py" \
		"data.train=$(CURDIR)/data/demo/shards/train data.val=$(CURDIR)/data/demo/shards/val" \
		"run.dir=$(CURDIR)/runs/pretrain/nano"
	@echo "(Ray uploads the checkout without data/ and runs/: paths are absolute. Data: make demo-data.)"

head-stop:
	@$(LOCAL_RAY) stop > /dev/null && echo "Ray stopped"

# The data-plane benchmark installs mosaicml-streaming beside the run outputs on first use
# (runs/bench/streaming-pkg, benchmarks/rival_packages.py): a rival, not a dependency.
bench: setup
	$(PY) -m benchmarks.run

# timm is not a dependency: installed (no deps, pinned) beside the run outputs, for the
# equivalence test with DeepMind's NFNets (tests/unit/test_timm_weights.py) and the benchmark.
TIMM_DIR := runs/bench/timm-pkg
TIMM_VERSION := 1.0.31
timm: setup
	@test -f $(TIMM_DIR)/timm-$(TIMM_VERSION).dist-info/METADATA || { rm -rf $(TIMM_DIR) && \
		$(PIP) --no-deps --target $(TIMM_DIR) timm==$(TIMM_VERSION) $(QUIET_PIP); }

bench-timm: timm
	$(PY) -m benchmarks.run --only timm_nfnet

# The prepared GPU check (benchmarks/gpu_check.py, <= 7 min on one GPU): run it on the GPU
# machine, whose own Python has torch, torchvision and timm. simplejpeg (the CPU loader's
# decoder) travels as a wheel that `make gpu-wheels` fetches here into runs/gpu-check/wheels.
GPU_PY ?= python3
GPU_WHEELS := runs/gpu-check/wheels
gpu-check:
	@deps=$$(mktemp -d); if ls $(GPU_WHEELS)/*.whl > /dev/null 2>&1; then \
		$(GPU_PY) -m pip install -q --no-deps --target $$deps $(GPU_WHEELS)/*.whl; fi; \
	PYTHONPATH=$$deps $(GPU_PY) -m benchmarks.gpu_check --out $${OUT:-runs/gpu-check}

gpu-wheels: setup
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 -d $(GPU_WHEELS) simplejpeg==1.9.0 $(QUIET_PIP)

# The same check on this CPU at tiny sizes, no timing claims (tests/unit/test_gpu_check.py).
gpu-check-dry: timm
	$(PY) -m benchmarks.gpu_check --dry --out runs/gpu-check/dry

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf runs .pytest_cache
