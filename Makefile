# The two commands of the README's quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test testbins clean

$(VENV)/.installed: pyproject.toml hack/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash hack/install.sh
	touch $@

install: $(VENV)/.installed

## Install everything, train the demo models if they are not cached, stream a generation.
demo: install
	$(VENV)/bin/specd demo

## Run the whole test suite.
test: install
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
