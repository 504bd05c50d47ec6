# The two commands: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-serving services clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,export,runtimes,demo-models,tracing,spark]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo/run.py

services:
	bash scripts/services.sh
	bash scripts/ensure-chromium.sh
	PYTHON=$(PYTHON) bash scripts/ensure-feast.sh
	PYTHON=$(PYTHON) bash scripts/ensure-evidently.sh
	PYTHON=$(PYTHON) bash scripts/ensure-mlflow-server.sh

test: $(STAMP) services
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo 'pytest collected no tests' >&2; exit 1; fi; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-serving: $(STAMP)
	$(PY) bench/serving/run.py

clean:
	rm -rf $(VENV) .cache
