# Quick start: `make demo` (set up + synthetic data + 5-fold training + calibration + submission),
# `make test` (set up + test suite). Both create .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# pip sometimes drops a large local wheel on the first try on a cold cache; one retry covers it.
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt \
	  || $(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -c "import torch, timm, onnx, onnxruntime" && touch $@

demo: venv
	$(PY) -m landslide.demo

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean-demo:
	rm -rf runs/demo data/synth
