# Quick start: `make demo` (set up + synthetic data + 5-fold training + calibration + submission),
# `make test` (set up + test suite). Both create .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# pip sometimes drops a large local wheel on the first try on a cold cache; one retry covers it.
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt \
	  || $(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	# The repository on the venv's path, so its Python imports `landslide` from any folder (no build step).
	$(PY) -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'landslide-repo.pth').write_text('$(CURDIR)\n')"
	cd / && $(CURDIR)/$(PY) -c "import landslide, torch, timm, onnx, onnxruntime" && touch $(CURDIR)/$@

demo: venv
	$(PY) -m landslide.demo

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean-demo:
	rm -rf runs/demo data/synth
