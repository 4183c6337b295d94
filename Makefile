# `make demo` and `make test` create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: test demo pretrain ablations ui bench gpu-check clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,cluster]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

demo: $(STAMP)
	$(PY) -m pipelines.demo

pretrain: $(STAMP)
	$(PY) -m pipelines.pretrain

ablations: $(STAMP)
	$(PY) -m pipelines.ablate

ui: $(STAMP)
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: $(STAMP)
	$(PY) benchmarks/unet_step.py

# One CUDA GPU, under 9 minutes: OUT/device_check.md and .json (benchmarks/device_check.py; README: The GPU check).
gpu-check: $(STAMP)
	$(PY) benchmarks/device_check.py --out $${OUT:-device_check}

clean-venv:
	rm -rf $(VENV)
