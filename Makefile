# Everything a newcomer needs: `make demo` and `make test`. Each target installs what it uses:
# virtual environments in .venv*/ and the Go tools in a cache outside the repository.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml devtools/pyproject.toml | sha256sum | cut -c1-12)
# The real backends of the bridge tests, each in its own venv (their pins conflict).
BACKENDS := hypha ray triton
REQUIREMENTS := operator/bioengine_operator/local/requirements
BACKEND_STAMPS := $(foreach b,$(BACKENDS),.venv-$(b)/.installed-$(shell sha256sum $(REQUIREMENTS)/$(b).txt | cut -c1-12))
KUBECONFIG_DEMO := .devcluster/bioengine-dev/kubeconfig
BIOENGINE := $(VENV)/bin/bioengine
DEMO := .demo

# What the real nodes need from Debian: the container runtime, CNI plugins, kube-proxy's
# iptables and conntrack, and the image builders (debootstrap, buildah).
APT_PACKAGES := containerd runc containernetworking-plugins iptables conntrack iproute2 \
	debootstrap buildah chromium

.PHONY: venv tools node-deps images backends crds lint test cluster-up cluster-down demo \
	demo-cluster clean lock chart-lint

$(STAMP): pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' -e ./devtools
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

define backend
.venv-$(1)/.installed-$(shell sha256sum $(REQUIREMENTS)/$(1).txt | cut -c1-12): $(REQUIREMENTS)/$(1).txt $(STAMP)
	$(PY) -m bioengine_operator.local.envs --root . $(1)
endef
$(foreach b,$(BACKENDS),$(eval $(call backend,$(b))))

## node-deps: install APT_PACKAGES (the real nodes' and the browser tests' Debian packages) with
## apt-get where missing (root; Debian or Ubuntu)
node-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing" $$missing; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
			>/dev/null; \
	fi

## images: build the real nodes' container images (the operator's from ./Dockerfile) into the
## cache, once per set of inputs
images: tools node-deps
	$(PY) -m bioengine_devtools images

## backends: the Hypha, Ray and Triton venvs the bridge tests and benchmarks run
backends: $(BACKEND_STAMPS)

## tools: build the pinned Go tools (kube-apiserver, kubelet, etcd, kwok, KubeRay, helm, CoreDNS)
## once into the cache
tools: venv
	$(PY) -m bioengine_devtools tools

## crds: regenerate crds/*.yaml from the pydantic models, and the chart's copy (tests check both)
crds: venv
	$(PY) -m bioengine_operator.api.crds crds
	cp crds/*.yaml charts/bioengine-operator/crds/

## lint: ruff, and mypy --strict on the shipped package and the dev harness (pyproject.toml's [tool.mypy])
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## test: lint, then the whole suite against real local control planes (kwok nodes, and two
## real nodes running the chart) and real backends
test: tools backends images lint
	$(PY) -m pytest

## cluster-up: start a local control plane and leave it running; prints the KUBECONFIG to export
cluster-up: tools
	$(PY) -m bioengine_devtools up

## cluster-down: stop the control plane (and the operator) started by cluster-up / demo-cluster
cluster-down: venv
	$(PY) -m bioengine_devtools down

## demo: the examples and apps/ on this machine (bioengine up), called through Hypha by
## examples/client.py, then stopped. Installs the Ray, Triton and Hypha environments on first use.
demo: venv
	$(PY) examples/sample_data.py $(DEMO)/cell-images
	@$(BIOENGINE) down --state-dir $(DEMO)/state >/dev/null  # what an interrupted demo left
	@trap '$(BIOENGINE) down --state-dir $(DEMO)/state' EXIT; trap 'exit 130' INT TERM; \
	$(BIOENGINE) up --detach --state-dir $(DEMO)/state --envs-dir . \
		--volume cell-images=$(DEMO)/cell-images \
		examples apps/nucleus-segmentation apps/probability-segmentation && \
	eval "$$($(BIOENGINE) env --state-dir $(DEMO)/state --user alice@example.org)" && \
	echo && echo '$$ python examples/client.py --picture $(DEMO)/segmentation.png' && \
	$(PY) examples/client.py --picture $(DEMO)/segmentation.png

## demo-cluster: the same YAML on a local control plane (kwok pods) with the operator running
demo-cluster: tools
	$(PY) -m bioengine_devtools up --operator
	KUBECONFIG=$(KUBECONFIG_DEMO) kubectl apply -f examples/
	KUBECONFIG=$(KUBECONFIG_DEMO) kubectl wait --for=jsonpath='{.status.phase}'=Ready \
		modelrunner/unet-runner --timeout=120s
	KUBECONFIG=$(KUBECONFIG_DEMO) kubectl get bioengineapps,modelrunners,bioenginedatasets
	KUBECONFIG=$(KUBECONFIG_DEMO) kubectl get rayservices,rayclusters,deployments,services,pdb,pods -o wide
	@echo
	@echo "export KUBECONFIG=$(KUBECONFIG_DEMO)   # then kubectl as usual; 'make cluster-down' stops it all"

## lock: re-pin requirements.lock (the image's dependencies) after changing pyproject.toml
lock:
	sh tools/lock-requirements.sh $(PYTHON)

## chart-lint: helm lint --strict the chart (the tests also lint every configuration)
chart-lint: tools
	"$$($(PY) -c 'from bioengine_devtools import tools; print(tools.binary("helm"))')" lint --strict charts/bioengine-operator

clean: cluster-down
	rm -rf $(VENV) $(foreach b,$(BACKENDS),.venv-$(b)) .devcluster $(DEMO)
