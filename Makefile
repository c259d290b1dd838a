# Everything a newcomer needs: `make demo` and `make test`. Each target installs what it uses:
# a virtual environment in .venv/ and the Go tools in a cache outside the repository.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: venv tools crds lint test cluster-up cluster-down demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## tools: build the pinned Go tools (kube-apiserver, etcd, kwok, KubeRay, helm) once into the cache
tools: venv
	$(PY) -m bioengine_operator.devcluster tools

## crds: regenerate crds/*.yaml from the pydantic models (a test fails when they drift)
crds: venv
	$(PY) -m bioengine_operator.api.crds crds

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## test: lint, then the whole suite against a real local control plane
test: tools lint
	$(PY) -m pytest

## cluster-up: start a local control plane and leave it running; prints the KUBECONFIG to export
cluster-up: tools
	$(PY) -m bioengine_operator.devcluster up

## cluster-down: stop the control plane started by cluster-up
cluster-down: venv
	$(PY) -m bioengine_operator.devcluster down

demo: cluster-up
	KUBECONFIG=.devcluster/bioengine-dev/kubeconfig kubectl get nodes -o wide
	KUBECONFIG=.devcluster/bioengine-dev/kubeconfig kubectl get crd

clean: cluster-down
	rm -rf $(VENV) .devcluster
