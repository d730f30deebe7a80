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

.PHONY: install test test-fast multi30k bench-mt bench-mt-speed bench-vision bench-dino bench-decode gpu-acceptance gpu-race bench-token-mixers bench-distill clean

install:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps $(FAIRSEQ)
	$(PY) -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c 'import fairseq, timm, torchvision, resmlp_core, resmlp_mt, mt_tools, vision; print("installed: fairseq", fairseq.__version__, "timm", timm.__version__, "torch", __import__("torch").__version__)'

test:
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 tests

test-fast:
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" tests

# The main job: Multi30k En-De, small ResMLP trained on the CPU (about 30 minutes).
multi30k:
	scripts/run_multi30k.sh

# The benchmarks (results/ files; see README, "Results").
# bench-mt: the translation race, python -m benchmarks.race_mt --stage all (sweep, race, curves, report;
#   results/mt_{sweep,race,curves,report}.*), about 9 hours on 2 cores; MINUTES is the race's
#   budget per run (default 25), STAGE runs one stage (sweep|race|curves|report); finished runs
#   are cached under checkpoints/race, so an interrupted bench-mt resumes where it stopped.
# bench-mt-speed: speed and sacreBLEU at a fixed budget, python -m benchmarks.bench_mt: about 85 minutes
#   (18 minutes of training per system; MINUTES=10 makes it about 50).
# bench-vision: our ResMLP S12/S24 (unfolded, folded) against timm's, python -m benchmarks.bench_vision
#   (results/bench_vision.{json,md}; BENCH_VISION_ARGS=--quick for a smoke test): about 10 minutes on 2 cores.
bench-mt:
	$(PY) -m benchmarks.race_mt --stage $(or $(STAGE),all) $(if $(MINUTES),--minutes $(MINUTES))

bench-mt-speed:
	$(PY) -m benchmarks.bench_mt $(if $(MINUTES),--minutes $(MINUTES))

bench-vision:
	$(PY) -m benchmarks.bench_vision $(BENCH_VISION_ARGS)

# Self-supervised ResMLP: DINO on the CIFAR-10 training images for at most 60 minutes, k-NN and
# linear probe against random init and the supervised model of the same size (trained here, 15 epochs,
# unless BENCH_DINO_ARGS="--supervised CKPT"), fine-tuning from DINO vs scratch (3 epochs each);
# results/dino_cifar10.{json,md,_cross_patch.png}. About 2.5 hours on 2 cores (80 minutes with --supervised
# CKPT); resumes where it stopped.
# BENCH_DINO_ARGS=--quick: a smoke test on a slice of the data (a few minutes, runs/bench_dino_quick/).
bench-dino:
	$(PY) -m benchmarks.bench_dino $(BENCH_DINO_ARGS)

# One GPU (H100/H200): the paper-scale paths in at most 8 minutes, results/gpu_acceptance.{json,md}
# (benchmarks/gpu_acceptance.py). ARGS=--dry-run rehearses it on the CPU in under 2 minutes.
# Exit status: 0 when every check passes, 1 when one fails or was skipped, 2 on a usage error.
# Without .venv (a GPU machine with fairseq carried as wheels) it runs python3, the repo on PYTHONPATH.
gpu-acceptance:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $$(test -x $(PY) && echo $(PY) || echo python3) -m benchmarks.gpu_acceptance $(ARGS)

# One GPU (H100/H200): ResMLP against the Transformer for the same GPU minutes on Multi30k En-De, the CPU
# race's small pair and ResMLP-6 vs Transformer-base if the budget allows, in at most 8 minutes;
# results/gpu_race.{json,md} (benchmarks/gpu_race.py). Reads data-bin/multi30k.en-de (prepared if absent).
# ARGS=--dry-run rehearses it on the CPU in under 2 minutes (results under runs/gpu_race_dryrun/).
# Without .venv (a GPU machine with fairseq carried as wheels) it runs python3, the repo on PYTHONPATH.
gpu-race:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $$(test -x $(PY) && echo $(PY) || echo python3) -m benchmarks.gpu_race $(ARGS)

# Decoding speed: ResMLP (fairseq-generate, Python API, fast path fp32/int8) against the
# Transformer (fairseq-generate, CTranslate2 fp32/int8), batch 128 and batch 1, and at equal output
# length; results/bench_decode.{json,md}. Reads the checkpoints of scripts/train_multi30k.sh en-de
# (checkpoints/multi30k.en-de.{resmlp,transformer}/checkpoint_best.pt); other options go in
# BENCH_DECODE_ARGS (e.g. "--resmlp R.pt --transformer T.pt", "--quick"). About 10 minutes on 2 cores.
bench-decode:
	$(PY) -m pip install --disable-pip-version-check -r requirements-bench.txt
	$(PY) -m benchmarks.bench_decode $(BENCH_DECODE_ARGS)

# The token-mixer study (Multi30k, both pairs; cached runs are skipped), one stage per call:
# the screen (default; 600 updates per variant, about 11 minutes each), "--stage race" (25 minutes
# per run, 3 seeds: about 4.5 hours) or "--stage curves" (to convergence at dropout 0.1/0.2/0.3:
# about 11 hours), in TOKEN_MIXERS_ARGS (e.g. "--pairs en-de --variants paper relative transformer").
bench-token-mixers:
	$(PY) -m benchmarks.mt_token_mixers $(TOKEN_MIXERS_ARGS)

# Distillation of the Transformer into attention-free students (teacher, distilled data,
# students, decoding speed, report; hours on 2 cores): DISTILL_ARGS (e.g. "--stage teacher").
bench-distill:
	$(PY) -m pip install --disable-pip-version-check -r requirements-bench.txt
	$(PY) -m benchmarks.mt_distill $(DISTILL_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
