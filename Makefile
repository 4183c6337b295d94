# `make demo` and `make test` create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: test demo pretrain ablations ui bench gpu-check motion docs clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,cluster,docs]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

demo: $(STAMP)
	$(PY) -m pipelines.demo

pretrain: $(STAMP)
	$(PY) -m pipelines.pretrain

ablations: $(STAMP)
	$(PY) -m pipelines.ablate

# The Dagster UI, `dg dev -w workspace.yaml` on the SQLite instance of dagster_home/, bound to loopback
# (README: The UI). pipelines/ui.py stops all of it within 5 s of Ctrl-C or SIGTERM.
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000
ui: $(STAMP)
	$(PY) -m pipelines.ui --host $(UI_HOST) --port $(UI_PORT)

bench: $(STAMP)
	$(PY) benchmarks/unet_step.py

# One CUDA GPU, under 9 minutes: OUT/device_check.md and .json, OUT/lavie (the motion run's stretch) (benchmarks/device_check.py;
# README: The GPU check). GPU_CHECK_ARGS=--quick gives sections 1-3 their smallest form, the motion run the rest.
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) benchmarks/device_check.py --out $${OUT:-device_check} $(GPU_CHECK_ARGS)

# One stretch of the tiny LaVie's motion run, niced (README: The tiny LaVie): continues the shipped UNet for
# MOTION_SECONDS, records it in its card and ships it when it moved up. Run it in the background: make motion &
MOTION_STAGE ?= base
MOTION_SECONDS ?= 3600
MOTION_SET ?=
motion: $(STAMP)
	nice -n 19 $(PY) -m lavie_model.tiny.tiny_lavie continue --stage $(MOTION_STAGE) --max-seconds $(MOTION_SECONDS) \
		$(if $(MOTION_SET),--set $(MOTION_SET))

# The documentation site into site/ (git ignores it), every warning an error (mkdocs.yml: strict); the CLI, settings,
# presets and asset graph pages are generated from the code by docs/hooks/generate.py. Open site/index.html.
# NO_MKDOCS_2_WARNING silences Material's banner about MkDocs 2 (mkdocs is pinned below 2 in pyproject.toml).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean-venv:
	rm -rf $(VENV)
