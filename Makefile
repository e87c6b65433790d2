# The verbs of llmjob. Heavy artefacts (virtualenv, pip wheels, Go builds) live in
# LLMJOB_CACHE, outside the repo tree, so a second run on the same machine is fast.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

LLMJOB_CACHE ?= /var/cache/llmjob
PYTHON_BASE ?= /usr/bin/python3.11
VENV := $(LLMJOB_CACHE)/venv
PY := $(VENV)/bin/python
# Pods on the local cluster run as a non-root user with this venv as their "image", so
# both the cache and the base interpreter live outside /root (which is private).
# Every verb runs this checkout's sources, whichever checkout the venv's editable install names.
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/trainer_image:$(CURDIR)/dev
export LLMJOB_CACHE

.PHONY: help venv images lint crds helm-lint test test-unit cluster cluster-down kueue kwok jobset bench-scale bench bench-gpu bench-operator bench-checkpoint demo test-e2e

help:
	@echo "make demo | test | test-unit | lint | images | crds | helm-lint | venv | cluster | cluster-down | kueue | kwok | jobset | bench | bench-gpu | bench-operator | bench-checkpoint | bench-scale"

venv:
	@LLMJOB_VENV=$(VENV) PYTHON_BASE=$(PYTHON_BASE) bash dev/venv.sh

# The operator image and the CPU trainer image, built with buildah (no Docker engine) into
# $(LLMJOB_CACHE)/images; rebuilt only when what they are built from changes (dev/images.sh).
images: venv
	@LLMJOB_VENV=$(VENV) bash dev/images.sh

lint: venv
	$(VENV)/bin/ruff check operator trainer_image dev tests
	$(VENV)/bin/ruff format --check operator trainer_image dev tests
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests/trainer trainer_image/bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint operator/Dockerfile trainer_image/Dockerfile
	"$$(bash dev/actionlint.sh)" .github/workflows/*.yaml

crds: venv
	$(PY) -m llmjob_operator.crd --out crds/llmtrainingjobs.training.llmjob.dev.yaml --out helm/llmjob-operator/crds/llmtrainingjobs.training.llmjob.dev.yaml

# The pinned helm is built with the local cluster's binaries (cached after the first build).
helm-lint:
	"$$(bash dev/build-controlplane.sh | tail -1)/helm" lint --strict helm/llmjob-operator

test-unit: venv
	$(PY) -m pytest tests/unit

# The local cluster (dev/, README "The local cluster"): state in .devcluster/, binaries
# built once into $(LLMJOB_CACHE)/k8s-<hash>/.
DEVCLUSTER := $(PY) -m llmjob_devcluster.cluster

cluster: venv
	$(DEVCLUSTER) up

cluster-down: venv
	$(DEVCLUSTER) down

# Kueue (built once into $(LLMJOB_CACHE)/kueue-<hash>/) on the running local cluster; it manages
# pods in namespaces labelled devcluster.llmjob.dev/kueue-managed=true. `make cluster-down` stops it.
kueue: cluster
	$(PY) -m llmjob_devcluster.kueue up

# Simulated GPU nodes (KWOK v0.8.0, built once into $(LLMJOB_CACHE)/scale-<hash>/ with JobSet)
# and the JobSet controller (v0.12.0) on the running local cluster; `make cluster-down` stops them.
kwok: cluster
	$(PY) -m llmjob_devcluster.kwok up --nodes $${KWOK_NODES:-4}

jobset: cluster
	$(PY) -m llmjob_devcluster.jobset up

# Only the end-to-end suite (real trainers through the chart-installed operator).
test-e2e: lint images
	$(call on_cluster,$(PY) -m pytest -m e2e tests/e2e)

# A real training job through the operator on the local cluster (README: what it does).
demo: images cluster
	$(PY) dev/demo.py

# Operator startup/recovery seconds for 1 and 20 jobs at once, and what 1 and 20 running jobs
# cost the API server (status PATCHes per job per minute, apiserver and operator CPU).
bench-operator: cluster
	cd $(CURDIR) && $(PY) -m bench.operator_startup --jobs 20
	cd $(CURDIR) && $(PY) -m bench.operator_cost --jobs 20

# llmjob and JobSet side by side on simulated GPU nodes (KWOK): 1, 100 and 1,000 jobs of 8
# workers at once (BENCH_SIZES), startup, steady-state API cost, recovery, deletion, CPU, RSS;
# BENCH_SCALE_ARGS passes flags (e.g. --profile, --systems llmjob).
# On a cluster of its own (.devcluster-scale) with upstream's node-monitor grace (50 s).
bench-scale: export LLMJOB_DEVCLUSTER_DIR := $(CURDIR)/.devcluster-scale
bench-scale: export LLMJOB_DEVCLUSTER_NODE_GRACE_SECONDS := 50
bench-scale: venv
	$(call on_cluster,cd $(CURDIR) && $(PY) -m bench.scale $(BENCH_SCALE_ARGS))

# Runs $(1) on the local cluster; stops the cluster afterwards (also when a test fails)
# unless it was already running before.
define on_cluster
	@if $(DEVCLUSTER) status >/dev/null 2>&1; then was_up=yes; else was_up=no; fi; \
	trap '[ $$was_up = yes ] || $(DEVCLUSTER) down' EXIT; \
	$(DEVCLUSTER) up; \
	$(1)
endef

# The whole suite: lint, unit, cluster, operator, chart, trainer and end-to-end tests.
test: lint images
	$(call on_cluster,$(PY) -m pytest tests)

# Figures, not tests: our trainer's tokens/s against a bare DeepSpeed loop, checkpoint I/O.
bench: venv
	$(PY) trainer_image/bench/throughput.py

# Commit blocking time and step overhead, sync vs async, and universal conversion time
# (gpt2-124m and tiny); BENCH_STEPS/BENCH_INTERVAL set the runs' length and commit interval.
bench-checkpoint: venv
	$(PY) trainer_image/bench/checkpoint_async.py

# bf16 tokens/s and MFU for gpt2-124m and llama-1b; says so and exits 0 without CUDA.
bench-gpu: venv
	$(PY) trainer_image/bench/gpu.py
