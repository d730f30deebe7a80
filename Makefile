# Set-up, tests and the main jobs. See README.md.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# fairseq 0.12 for Python 3.11: the prebuilt ve-fairseq wheel (see README, "Why ve-fairseq").
# --no-deps: its metadata asks for torchaudio, which has no build for torch 2.14.1 and would
# pull a second torch; fairseq's translation code never imports it.
FAIRSEQ := ve-fairseq==0.12.3
# Tests run on both cores; each worker and each CLI it starts uses one thread.
TEST_WORKERS ?= 2

.PHONY: install test test-fast multi30k bench-mt bench-vision clean

install:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps $(FAIRSEQ)
	$(PY) -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c 'import fairseq, timm, torchvision, resmlp_core, vision; print("installed: fairseq", fairseq.__version__, "timm", timm.__version__, "torch", __import__("torch").__version__)'

test:
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

test-fast:
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

# The main job: Multi30k En-De, small ResMLP trained on the CPU (about 30 minutes).
multi30k:
	scripts/run_multi30k.sh

# The benchmarks (results/ files; see README, "Results"): about 85 minutes (18 minutes of
# training per system; MINUTES=10 makes it about 50) and about 10 minutes on 2 cores.
bench-mt:
	$(PY) scripts/bench_mt.py $(if $(MINUTES),--minutes $(MINUTES))

bench-vision:
	scripts/bench_vision.sh

clean:
	rm -rf $(VENV) build *.egg-info
