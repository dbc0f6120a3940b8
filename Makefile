# The two commands of the README's quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test testbins images clean

$(VENV)/.installed: pyproject.toml hack/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash hack/install.sh
	touch $@

install: $(VENV)/.installed

## Install everything, start the local stack on the demo models, stream a generation back.
demo: install
	$(VENV)/bin/specd demo

## Run the whole test suite (after ruff, lint and import order, and mypy, types; both configured
## in pyproject.toml). The Go builds (CPU) and the image build (network, disk) overlap.
test: install
	$(VENV)/bin/ruff check .
	$(PY) -m mypy
	$(MAKE) --no-print-directory -j2 testbins images
	$(VENV)/bin/python -m pytest

## Build (or reuse from ~/.cache/specd/testbins) etcd, kube-*, kwok, helm for the tests/k8s suite.
## Where they cannot be built, tests/k8s skips with the reason, unless SPECD_REQUIRE_DEV_CLUSTER=1.
testbins:
	bash hack/testbins/build.sh >/dev/null || [ "$${SPECD_REQUIRE_DEV_CLUSTER:-0}" != 1 ]

## Build the operator and worker/router images from docker/ with buildah on a Debian base made by
## mmdebstrap (no Docker engine, no registry), cached in ~/.cache/specd/images; the real-node tests
## import them into the dev cluster's containerd. Where that cannot run (not root, no apt), the
## real-node tests skip with the reason, unless SPECD_REQUIRE_DEV_CLUSTER=1.
images:
	{ bash hack/install-node-packages.sh && bash hack/images/build.sh >/dev/null; } || [ "$${SPECD_REQUIRE_DEV_CLUSTER:-0}" != 1 ]

clean:
	rm -rf $(VENV) build *.egg-info
