#!/usr/bin/env python
"""GPU acceptance: the paper-scale paths on one NVIDIA GPU, in one run of at most 8 minutes.

    make gpu-acceptance                 # one H100/H200, after `make install`
    make gpu-acceptance ARGS=--dry-run   # the same code on the CPU at tiny sizes (< 2 min)

Stages, in this order on the GPU (one at a time, so that none disturbs another's timing). Each
has a time budget; a global deadline (8 minutes from the start) skips a stage that no longer
fits, reported as "skipped: out of time", and stops a stage that runs past its budget. Progress
lines carry the clock time and the seconds since the start.

1. ``mt_prep`` (in the background from the start): Multi30k En-De binarized by
   ``scripts/prepare_multi30k.py`` into ``data-bin/multi30k.en-de`` if that folder is absent
   (raw text from ``$RESMLP_DATA/multi30k``, else ``../shared/data/multi30k``).
2. ``vision_bench``: ResMLP-S12 at 224 px, bf16 autocast, synthetic data, the same random
   weights everywhere: equivalence (fp32, TF32 off) of ours (``timm.create_model("resmlp_s12")``
   after ``import vision``), timm's own ``resmlp_12_224`` and ours folded
   (``timm.utils.reparameterize_model``); training-step img/s of ours and timm's (batch 128,
   LAMB, drop path 0.05); inference img/s at batch 256 of timm, ours and ours folded, against
   the paper's 1415 img/s (V100).
3. ``mt_train_resmlp`` / ``mt_train_transformer``: ``fairseq-train`` of ResMLP-6
   (``resmlp_mt``: 6+6 layers, d 512, MLP 2048) and of a Transformer-base of the same depth and
   width (``--arch transformer``, 6+6 layers, d 512, FFN 2048, 8 heads; pre-norm, as the repo's
   Multi30k peer), both with the paper recipe of ``scripts/train_wmt14.sh``: Adagrad lr 0.2,
   fixed schedule after a linear warm-up, label smoothing 0.1, dropout 0.15, shared embeddings,
   4096 tokens per step, for the same wall-clock minutes each (``--stop-time-hours``).

   Mixed precision: fairseq's ``--fp16`` (FP16Optimizer: fp16 model, fp32 master weights,
   dynamic loss scaling), with ``--fp16-no-flatten-grads`` (fairseq's Adagrad refuses flat
   parameters: "does not support flat params"). Not ``--bf16``: in fairseq 0.12 it implies
   ``--tpu`` and the trainer leaves the GPU. Not ``--amp``: its ``AMPOptimizer`` unscales the
   gradients twice (``clip_grad_norm`` unscales the torch optimizer, then ``GradScaler.step``
   unscales again through the fairseq wrapper, a different object), so every step sees
   gradients divided by the loss scale once more.

   Warm-up: the paper's 32k updates (lr reaches ~0.006 in the run's ~900 updates). The first
   H100 run used 8000 (the paper's shortened 4x): ResMLP-6 diverged at update ~800, lr 0.020
   (loss 4.8 -> validation loss 62, two fp16 overflows, output "...."), kept in
   ``results/gpu_acceptance_h100_run1.*``. On the CPU, ``resmlp_mt_small`` with this recipe
   diverged (loss 1e7+) once the lr reached 0.06-0.14, whatever the warm-up (100, 400 or 1000
   updates). ResMLP under Adagrad is unstable well below the paper's lr 0.2 on Multi30k; the
   lr reached is reported.

   Checks from fairseq's JSON log: the training loss falls (mean of the last quarter of the log
   intervals below the first quarter's), the final validation loss below the first quarter's
   training loss (catches a divergence at the end), no NaN/inf and no FloatingPointError, fp16
   overflow skips at most 1% of updates once the loss scale has calibrated, enough updates;
   figures: words/s (fairseq's ``wps``, median over the log intervals after the first, which
   holds the CUDA start-up), parameters.
4. ``mt_generate``: ``fairseq-generate`` beam 4, batch 128, ``--fp16``, on test_2016_flickr,
   through :func:`mt_tools.evaluate.evaluate`: sacreBLEU (with its signature), sentences/s.
5. ``vision_cli``: ``python -m vision.train`` on CIFAR-10 upsampled to 224 px (1000 images a
   class, 50 a class for validation): timm's RegNetY-400MF (a convnet teacher) for one epoch,
   then ResMLP-S12 with hard distillation from it (``--distillation-type hard --teacher-path``,
   DeiT's loss, single head) for three epochs: about 300 steps, bf16 autocast.
6. ``vision_dino``: ``python -m vision.dino`` with the paper-scale config ``dino_imagenet_s12``
   (S12 at 224 px, 2 global + 8 local crops, 65536-d head, bf16 autocast) on CIFAR-10 up-sampled
   (100 images a class): epoch 0, then ``--resume auto`` for epoch 1; then ``python -m vision.knn``
   of the teacher backbone (k=20; 100 training / 20 test images a class).
7. ``vision_compile``: the inference measurement with ``torch.compile`` (on the GPU ours folded
   and timm; in the dry run also ours), outputs compared with eager, against the paper's 1415 img/s.

Results: one table on stdout, ``results/gpu_acceptance.json`` (card, driver, versions,
settings, every figure, every check, every stage with its time) and ``.md``; logs of every
process under ``runs/gpu_acceptance/logs``. A check is a named assertion with its measured value
and threshold, reported pass/fail; the exit status is 1 if any check fails or was skipped. The
paper's speed claims are *goals*, reported pass/fail but counted in the exit status only with
``--strict-goals``: ResMLP-S12 folded >= 1415 img/s, ResMLP-6 words/s >= 1.2x the
Transformer's.

``--dry-run`` runs the same stages on the CPU at tiny sizes: data slices (1000 training
pairs, 24 test sentences, 600-piece vocabulary), 2-layer d=64 translation models trained for
8 updates (an update budget, so that a busy machine does the same work; 30 s at most; warm-up
1000), fp32 for fairseq (its fp16 path needs CUDA), short generation limits,
32-px images, batch 4, bf16 autocast on the CPU for the vision timings,
``torch.compile(backend="aot_eager")``, CIFAR-10 slices of 2 images a class. The vision stages
run beside the translation ones there (their timings mean nothing). Its budgets are sized for
the idle 2-core bench machine and stretched by this machine's measured slowdown
(``benchmarks.harness.measure_slowdown``), so that a busy machine does not fail it. Results go to
``results/gpu_acceptance_dryrun.{json,md}`` (or ``--out``); the GPU goals and thresholds
(BLEU, fp16 overflow, speed) are "n/a".
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: the repo's packages without an install
    sys.path.insert(0, str(REPO))
from benchmarks.harness import (NOT_SELECTED, Checks, base_env, data_ready, elapsed, find_data_root,  # noqa: E402
                                finite, fmt, json_safe, kill_group, log, machine_info, measure_slowdown,
                                prepare_command, run_logged, slice_raw, start_clock, tail)
from benchmarks.common import write_result  # noqa: E402
from benchmarks.fairseq_runs import TINY_RESMLP, TINY_TRANSFORMER, TRANSFORMER_BASE, fairseq_figures  # noqa: E402

PAPER_S12_IMG_S = 1415.0  # ResMLP paper, Table 4: ResMLP-S12 throughput on one V100 (img/s)
WPS_GOAL_RATIO = 1.2

# ----------------------------------------------------------------------------------------------
# Settings of the two modes. Nothing here is tuned on the GPU: these are the only values used.
# ----------------------------------------------------------------------------------------------

PROFILES: Dict[str, Dict[str, Any]] = {
    "gpu": {
        "deadline_s": 480.0,
        "reserve_s": 8.0,  # kept for writing the report
        "mt": {
            "minutes": 0.75, "max_tokens": 4096, "warmup_updates": 32000, "log_interval": 50, "precision": "fp16",
            "resmlp_size": [], "transformer_size": TRANSFORMER_BASE, "slice": None, "vocab_size": 8000,
            "gen_batch": 128, "gen_fp16": True, "gen_extra": [], "max_update": None, "min_updates": 100,
            "bleu_min": 1.0,
            "train_overhead_s": 60.0, "prep_workers": 8,
        },
        "vision": {
            "img": 224, "train_batch": 128, "infer_batch": 256, "rounds": 10, "train_rounds": 10,
            "autocast": "bfloat16", "compile_backend": "inductor", "compile_min_s": 30.0, "matmul_n": 8192,
            # two H100 runs (2026-11-26, morning): Inductor did not finish compiling the folded
            # model within 110-130 s. Its channel MLP then ran in row chunks on every device:
            # dozens of in-place GEMMs per block to compile. Chunks are now CPU-only and eager-only.
            "compile_variants": ["ours_folded", "timm"],
        },
        "cli": {
            "img": 224, "batch": 128, "max_per_class": 1000, "val_max_per_class": 50, "teacher_epochs": 1,
            "student_epochs": 3, "workers": 8, "threads": None, "min_steps": 200,
        },
        # vision.dino with the paper-scale config (dino_imagenet_s12: S12 at 224 px, 2 global + 8
        # local crops, 65536-d head) on a CIFAR-10 slice up-sampled to 224 px: one epoch, a resume
        # for the second, then vision.knn of the teacher backbone
        "dino": {"config": "dino_imagenet_s12", "max_per_class": 100, "batch": 64, "epochs": 2, "workers": 8,
                 "threads": None, "extra": [], "knn_max_per_class": 100, "knn_val_max_per_class": 20},
        # stage: (minimum seconds to start it, most seconds it may take)
        "budgets": {
            "mt_prep": (5, 150), "vision_bench": (20, 60), "mt_train": (65, 110), "mt_generate": (20, 80),
            "vision_cli": (45, 110), "vision_compile": (45, 150), "vision_dino": (40, 100),
        },
    },
    "dry-run": {
        "deadline_s": 115.0,
        "reserve_s": 3.0,
        "mt": {
            # an update budget, not seconds, so that a busy machine does the same work (seconds of it
            # can make a single update beside a test session); the minutes are a cap behind it
            "minutes": 0.5, "max_update": 8, "max_tokens": 1024, "warmup_updates": 1000, "log_interval": 2,
            "precision": "fp32",
            "resmlp_size": TINY_RESMLP, "transformer_size": TINY_TRANSFORMER,
            "slice": {"train": 1000, "val": 24, "test_2016_flickr": 24}, "vocab_size": 600,
            "gen_batch": 128, "gen_fp16": False, "gen_extra": ["--max-len-a", "1.2", "--max-len-b", "10"],
            "min_updates": 8, "bleu_min": None, "train_overhead_s": 40.0, "prep_workers": 1,
        },
        "vision": {
            "img": 32, "train_batch": 4, "infer_batch": 4, "rounds": 2, "train_rounds": 2,
            "autocast": "bfloat16", "compile_backend": "aot_eager", "compile_min_s": 5.0, "matmul_n": 256,
            "compile_variants": ["ours_folded", "timm", "ours"],
        },
        "cli": {
            "img": 32, "batch": 4, "max_per_class": 2, "val_max_per_class": 1, "teacher_epochs": 1,
            "student_epochs": 2, "workers": 0, "threads": 1, "min_steps": 5,
        },
        "dino": {"config": "dino_cifar10_cpu", "max_per_class": 4, "batch": 8, "epochs": 2, "workers": 0, "threads": 1,
                 "extra": ["--out-dim", "64", "--head-hidden-dim", "32", "--head-bottleneck-dim", "16",
                           "--model-kwargs", "patch_size=8", "embed_dim=32", "depth=2", "init_values=1.0"],
                 "knn_max_per_class": 4, "knn_val_max_per_class": 2},
        "budgets": {
            "mt_prep": (1, 60), "vision_bench": (5, 40), "mt_train": (8, 45), "mt_generate": (8, 45),
            "vision_cli": (10, 50), "vision_compile": (5, 40), "vision_dino": (10, 50),
        },
    },
}



def scale_budgets(prof: Dict[str, Any], factor: float) -> None:
    """Stretch a profile's global deadline and every stage's budget (its minimum start time and
    its longest run) by ``factor`` >= 1, in place: the work stays the same, the machine is slower."""
    factor = max(1.0, factor)
    prof["budgets"] = {k: (lo * factor, hi * factor) for k, (lo, hi) in prof["budgets"].items()}
    prof["deadline_s"] *= factor


SYSTEMS = ("resmlp", "transformer")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # as vision/configs/cifar10_*.yaml


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


# --stages: the groups of stages a run may be limited to (e.g. to re-check some on a second call)
STAGE_GROUPS = {"vision_bench": ("vision_bench",),
                "mt": ("mt_prep", "mt_train_resmlp", "mt_train_transformer", "mt_generate"),
                "vision_cli": ("vision_cli",), "vision_compile": ("vision_compile",), "vision_dino": ("vision_dino",)}


def declare_checks(checks: Checks, mode: str) -> None:
    prof = PROFILES[mode]
    checks.declare("mt.data.ready", "translation", "mt_prep",
                   "binarized train/valid/test, joined dictionary and references present")
    for s in SYSTEMS:
        st = f"mt_train_{s}"
        checks.declare(f"mt.{s}.train.exit_ok", "translation", st,
                       "fairseq-train exit status 0 and a checkpoint written")
        checks.declare(f"mt.{s}.train.updates", "translation", st, f">= {prof['mt']['min_updates']} updates")
        checks.declare(f"mt.{s}.train.loss_falls", "translation", st,
                       "mean training loss of the last quarter of log intervals < of the first")
        checks.declare(f"mt.{s}.train.no_nan", "translation", st,
                       "0 non-finite losses / grad norms, no FloatingPointError")
        checks.declare(f"mt.{s}.train.valid_sane", "translation", st,
                       "final validation loss < first quarter's training loss")
        checks.declare(f"mt.{s}.train.fp16_overflow", "translation", st,
                       "fp16 overflow (skipped) updates after the loss-scale calibration <= 1% of updates")
        checks.declare(f"mt.{s}.generate.complete", "translation", "mt_generate",
                       "one hypothesis per test reference (beam 4)")
        checks.declare(f"mt.{s}.generate.bleu", "translation", "mt_generate",
                       f"sacreBLEU >= {prof['mt']['bleu_min']}" if prof["mt"]["bleu_min"] is not None
                       else "sacreBLEU >= 1.0 (GPU)")
    checks.declare("mt.goal.resmlp_wps_vs_transformer", "translation", "mt_train_transformer",
                   f"ResMLP-6 words/s >= {WPS_GOAL_RATIO}x Transformer-base", kind="goal")
    checks.declare("vision.bench.ours_matches_timm", "vision", "vision_bench",
                   "max abs(ours - timm) <= 1e-4 (fp32, TF32 off)")
    checks.declare("vision.bench.folded_matches_ours", "vision", "vision_bench",
                   "max abs(folded - ours) <= 1e-4 (fp32, TF32 off)")
    checks.declare("vision.bench.train_loss_finite", "vision", "vision_bench",
                   "training-step losses finite (ours and timm)")
    checks.declare("vision.goal.s12_folded_img_s", "vision", "vision_bench",
                   f"folded S12 inference img/s at batch {prof['vision']['infer_batch']} >= {PAPER_S12_IMG_S:.0f} "
                   "(paper, V100, batch 256)", kind="goal")
    variants = PROFILES[mode]["vision"]["compile_variants"]
    checks.declare("vision.compile.all_variants", "vision", "vision_compile",
                   f"{len(variants)} of {len(variants)} variants compiled ({', '.join(variants)})")
    checks.declare("vision.compile.matches_eager", "vision", "vision_compile",
                   "max abs(compiled - eager) / max abs(eager) <= 0.05")
    checks.declare("vision.goal.s12_folded_compiled_img_s", "vision", "vision_compile",
                   f"compiled folded S12 img/s at batch {prof['vision']['infer_batch']} >= {PAPER_S12_IMG_S:.0f} "
                   "(paper, V100, batch 256)", kind="goal")
    checks.declare("vision.cli.teacher", "vision", "vision_cli",
                   "vision.train of the timm convnet teacher: exit 0, every epoch done")
    checks.declare("vision.cli.student_hard_distillation", "vision", "vision_cli",
                   "vision.train of ResMLP-S12 with hard distillation: exit 0, every epoch done")
    checks.declare("vision.cli.steps", "vision", "vision_cli",
                   f">= {prof['cli']['min_steps']} training steps (teacher + student)")
    checks.declare("vision.cli.loss_finite", "vision", "vision_cli", "every epoch's training loss finite")
    checks.declare("vision.dino.train_resume", "vision", "vision_dino",
                   f"vision.dino ({prof['dino']['config']}): epoch 0, then --resume auto for epoch 1: exit 0 twice, "
                   f"{prof['dino']['epochs']} epochs in summary.csv, the second run resumed")
    checks.declare("vision.dino.loss_finite", "vision", "vision_dino", "every epoch's DINO loss finite")
    checks.declare("vision.dino.knn", "vision", "vision_dino",
                   "vision.knn of the DINO teacher backbone: exit 0, top-1 reported")


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------


def run_worker(name: str, config: dict, out_json: Path, timeout: float, mode: str, log_path: Path) -> Dict[str, Any]:
    """Run a stage in a child process (``--worker``) so that the deadline can stop it; the child
    writes its figures to ``out_json`` as it goes, so a stopped stage still reports what it did."""
    config = dict(config, deadline_epoch=time.time() + timeout - 3)
    cfg_path = out_json.with_suffix(".config.json")
    cfg_path.write_text(json.dumps(config))
    if out_json.exists():
        out_json.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-config", str(cfg_path),
           "--worker-out", str(out_json)]
    proc = run_logged(cmd, log_path, timeout, env=base_env(mode), what=name)
    proc["result"] = json.loads(out_json.read_text()) if out_json.exists() else {}
    return proc


# ----------------------------------------------------------------------------------------------
# The orchestrator
# ----------------------------------------------------------------------------------------------


class Acceptance:
    def __init__(self, args: argparse.Namespace) -> None:
        start_clock()  # the deadline counts from the run's start
        self.args = args
        self.mode = "dry-run" if args.dry_run else "gpu"
        self.prof = copy.deepcopy(PROFILES[self.mode])
        # The dry run's budgets are sized for the idle bench machine: on a slower or busier one
        # they stretch by its measured slowdown (benchmarks.harness.measure_slowdown), a larger
        # --deadline-s stretches them further; the GPU run's are never stretched.
        self.slowdown = measure_slowdown() if self.mode == "dry-run" else None
        factor = self.slowdown["factor"] if self.slowdown else 1.0
        if args.deadline_s:
            factor = max(factor, args.deadline_s / self.prof["deadline_s"])
        scale_budgets(self.prof, factor)
        if args.deadline_s:
            self.prof["deadline_s"] = args.deadline_s
        if args.mt_minutes:
            self.prof["mt"]["minutes"] = args.mt_minutes
        if args.mt_warmup:
            self.prof["mt"]["warmup_updates"] = args.mt_warmup
        self.workdir = Path(args.workdir or REPO / "runs" / ("gpu_acceptance_dryrun" if args.dry_run
                                                             else "gpu_acceptance")).resolve()
        self.data_root = find_data_root(args.data_root)
        self.checks = Checks()
        declare_checks(self.checks, self.mode)
        self.stages: Dict[str, Dict[str, Any]] = {}
        self.report: Dict[str, Any] = {
            "mode": self.mode,
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "deadline_s": self.prof["deadline_s"],
            "workdir": str(self.workdir),
            "data_root": str(self.data_root) if self.data_root else None,
            "machine": {},
            "budget_factor": factor,
            "slowdown": self.slowdown,
            "settings": {k: self.prof[k] for k in ("mt", "vision", "cli", "dino", "budgets")},
            "translation": {"prep": {}, "train": {}, "generate": {}, "ratios": {}},
            "vision": {"bench": {}, "compile": {}, "cli": {}, "dino": {}},
        }
        self.selected = {st for group in (args.stages or STAGE_GROUPS) for st in STAGE_GROUPS[group]}
        self.prep_thread: Optional[threading.Thread] = None
        self.prep_result: Dict[str, Any] = {}

    # -- time ----------------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.prof["deadline_s"] - self.prof["reserve_s"] - elapsed()

    def stage(self, name: str, budget_key: str, fn: Callable[[float], None]) -> None:
        min_s, max_s = self.prof["budgets"][budget_key]
        cap = min(max_s, self.remaining())
        entry: Dict[str, Any] = {"budget_s": round(max_s, 1), "min_s": min_s, "started_at_s": round(elapsed(), 1)}
        self.stages[name] = entry
        if name not in self.selected:
            entry.update(status=NOT_SELECTED, seconds=0.0)
            log(f"stage {name}: {NOT_SELECTED}")
            return
        if cap < min_s:
            entry.update(status="skipped: out of time", seconds=0.0,
                         error=f"{self.remaining():.0f}s left before the deadline, the stage needs at least {min_s}s")
            log(f"stage {name}: skipped: out of time ({self.remaining():.0f}s left, needs {min_s}s)")
            return
        log(f"stage {name}: start (budget {cap:.0f}s, {self.remaining():.0f}s left before the deadline)")
        start = time.monotonic()
        try:
            fn(cap)
            entry["status"] = "ok"
        except Exception as err:  # a failed stage is reported, the next ones still run
            entry["status"] = "failed"
            entry["error"] = f"{type(err).__name__}: {err}"[:2000]
            entry["traceback"] = traceback.format_exc()[-3000:]
            log(f"stage {name}: FAILED: {entry['error'][:500]}")
        entry["seconds"] = round(time.monotonic() - start, 1)
        log(f"stage {name}: {entry['status']} in {entry['seconds']:.1f}s")

    # -- run -----------------------------------------------------------------------------------

    def run(self) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log(f"GPU acceptance ({self.mode}), deadline {self.prof['deadline_s']:.0f}s, workdir {self.workdir}, "
            f"data {self.data_root}")
        self.report["machine"] = machine_info(self.mode)
        m = self.report["machine"]
        if self.slowdown:
            sd = self.slowdown
            log(f"budgets x{self.report['budget_factor']:.2f}: this machine runs {sd['workload_ratio']:.2f}x the idle "
                "bench machine's time on a fixed workload, "
                f"load average {sd['load_average_1min']:.1f} on {sd['cores']} cores")
        log(f"machine: {m.get('gpu_name') or 'no GPU'}, driver {m.get('driver')}, torch {m.get('torch')}, "
            f"CUDA {m.get('cuda')}, {m.get('cpu_count')} CPU cores")
        self.start_prep()

        def translation() -> None:
            self.stage("mt_prep", "mt_prep", self.wait_prep)
            for system in SYSTEMS:
                self.stage(f"mt_train_{system}", "mt_train", lambda cap, s=system: self.mt_train(s, cap))
            self.mt_ratios()
            self.stage("mt_generate", "mt_generate", self.mt_generate)

        def vision_rest() -> None:
            self.stage("vision_cli", "vision_cli", self.vision_cli)
            self.stage("vision_dino", "vision_dino", self.vision_dino)
            self.stage("vision_compile", "vision_compile", self.vision_compile)

        if self.mode == "gpu":  # one stage at a time: no stage disturbs another's timing
            self.stage("vision_bench", "vision_bench", self.vision_bench)
            translation()
            vision_rest()
        else:  # the dry run's timings mean nothing: the vision stages run beside the translation ones
            lane = threading.Thread(target=lambda: (self.stage("vision_bench", "vision_bench", self.vision_bench),
                                                    vision_rest()))
            lane.start()
            translation()
            lane.join()
        return self.finish()

    def finish(self) -> int:
        if self.prep_thread is not None and self.prep_thread.is_alive():
            log("the data preparation is still running: stopping it")
            proc = self.prep_result.get("proc")
            if proc is not None:
                kill_group(proc)
        self.checks.finalize(self.stages)
        failed = self.checks.failed(self.args.strict_goals)
        self.report["stages"] = self.stages
        self.report["checks"] = list(self.checks.items.values())
        self.report["wall_seconds"] = round(elapsed(), 1)
        self.report["passed"] = not failed
        self.report["failed_checks"] = failed
        out = (Path(self.args.out) if self.args.out
               else REPO / "results" / ("gpu_acceptance_dryrun" if self.mode == "dry-run" else "gpu_acceptance"))
        out = out.with_suffix("") if out.suffix in (".json", ".md") else out
        out.parent.mkdir(parents=True, exist_ok=True)
        json_path, md_path = Path(f"{out}.json"), Path(f"{out}.md")
        write_result(json_path, json.dumps(json_safe(self.report), indent=1, default=str, allow_nan=False) + "\n")
        md = markdown(self.report)
        write_result(md_path, md)
        print()
        print(md)
        log(f"wrote {json_path} and {md_path}")
        n = {s: sum(1 for i in self.checks.items.values() if i["status"] == s)
             for s in ("pass", "fail", "skipped", "n/a")}
        log(f"{'PASSED' if not failed else 'FAILED'}: {n['pass']} pass, {n['fail']} fail, {n['skipped']} skipped, "
            f"{n['n/a']} n/a"
            + (f"; failing: {', '.join(failed)}" if failed else "") + f"; wall clock {elapsed():.0f}s")
        return 0 if not failed else 1

    # -- translation ---------------------------------------------------------------------------

    def mt_data_dir(self) -> Path:
        if self.mode == "dry-run":
            return self.workdir / "data-bin" / "multi30k.en-de"
        return Path(self.args.mt_data).resolve() if self.args.mt_data else REPO / "data-bin" / "multi30k.en-de"

    def start_prep(self) -> None:
        if "mt_prep" not in self.selected:
            return
        data = self.mt_data_dir()
        prep = self.report["translation"]["prep"]
        prep["data"] = str(data)
        if data_ready(data) and self.mode == "gpu":
            prep["status"] = "present"
            log(f"translation data {data} present: not prepared again")
            return
        raw = self.data_root / "multi30k" if self.data_root else None
        if raw is None or not (raw / "train.en").is_file():
            prep["status"] = "no raw data"
            prep["error"] = f"{data} is absent and no raw Multi30k was found (set RESMLP_DATA or --data-root)"
            return
        if self.prof["mt"]["slice"]:
            raw = slice_raw(raw, self.workdir / "raw-slice", self.prof["mt"]["slice"])
        workers = min(self.prof["mt"]["prep_workers"], os.cpu_count() or 1)
        cmd = prepare_command(raw, data, self.prof["mt"]["vocab_size"], workers)
        prep.update(status="running", command=cmd, raw=str(raw))
        log(f"preparing {data} in the background: {' '.join(cmd[1:])}")
        log_path = self.workdir / "logs" / "mt_prep.log"
        env = base_env(self.mode)

        def target() -> None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            start = time.monotonic()
            with open(log_path, "w") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                        start_new_session=True)
                self.prep_result["proc"] = proc
                proc.wait()
            self.prep_result.update(returncode=proc.returncode, seconds=round(time.monotonic() - start, 1),
                                    log=str(log_path))

        self.prep_thread = threading.Thread(target=target, daemon=True)
        self.prep_thread.start()

    def wait_prep(self, cap: float) -> None:
        prep = self.report["translation"]["prep"]
        data = self.mt_data_dir()
        if self.prep_thread is not None:
            self.prep_thread.join(timeout=cap)
            if self.prep_thread.is_alive():
                kill_group(self.prep_result["proc"])
                self.prep_thread.join(5)
                prep["status"] = "timed out"
            else:
                prep["status"] = "prepared" if self.prep_result.get("returncode") == 0 else "failed"
            prep.update({k: v for k, v in self.prep_result.items() if k != "proc"})
            if prep["status"] != "prepared":
                prep["log_tail"] = tail(Path(self.prep_result.get("log", self.workdir / "logs" / "mt_prep.log")))
        ok = data_ready(data)
        if ok:
            info = json.loads((data / "prep.json").read_text())
            prep["max_positions"] = info.get("max_positions", 128)
            prep["sentences"] = {k: v.get("kept") for k, v in info.get("splits", {}).items()}
        self.checks.set("mt.data.ready", str(data) if ok else None, ok, note=prep.get("status", ""))
        if not ok:
            raise RuntimeError(f"translation data not ready ({prep.get('status')}): {prep.get('error', '')}")

    def mt_command(self, system: str, save_dir: Path) -> List[str]:
        mt = self.prof["mt"]
        data = self.mt_data_dir()
        positions = str(max(128, int(self.report["translation"]["prep"].get("max_positions", 128))))
        cmd = [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", str(REPO / "resmlp_mt")]
        if system == "resmlp":
            cmd += ["--arch", "resmlp_mt", "--layerscale-init", "0.2", *mt["resmlp_size"]]
        else:
            cmd += ["--arch", "transformer", *mt["transformer_size"], "--encoder-normalize-before",
                    "--decoder-normalize-before"]
        cmd += [
            "--share-all-embeddings", "--max-source-positions", positions, "--max-target-positions", positions,
            "--optimizer", "adagrad", "--lr", "0.2", "--lr-scheduler", "fixed",
            "--warmup-updates", str(mt["warmup_updates"]),
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--dropout", "0.15",
            "--max-tokens", str(mt["max_tokens"]), "--stop-time-hours", f"{mt['minutes'] / 60:.6f}",
            "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--save-interval", "1000000",
            "--validate-interval", "1000000", "--skip-invalid-size-inputs-valid-test", "--log-format", "json",
            "--log-interval", str(mt["log_interval"]), "--seed", "1",
        ]
        if mt.get("max_update"):
            cmd += ["--max-update", str(mt["max_update"])]
        if mt["precision"] == "fp16":
            cmd += ["--fp16", "--fp16-no-flatten-grads"]
        else:
            cmd += ["--cpu"]
        return cmd

    def mt_train(self, system: str, cap: float) -> None:
        mt = self.prof["mt"]
        if not data_ready(self.mt_data_dir()):
            raise RuntimeError("no translation data (stage mt_prep)")
        save_dir = self.workdir / "mt" / system
        if save_dir.exists():
            shutil.rmtree(save_dir)
        save_dir.mkdir(parents=True)
        cmd = self.mt_command(system, save_dir)
        log(f"fairseq-train {system} for {mt['minutes']:.2f} min ({mt['precision']}): {' '.join(cmd[3:])}")
        proc = run_logged(cmd, self.workdir / "logs" / f"mt_train_{system}.log", cap, env=base_env(self.mode),
                          what=f"fairseq-train {system}")
        text = Path(proc["log"]).read_text(errors="replace")
        fig = fairseq_figures(text)
        checkpoint = save_dir / "checkpoint_last.pt"
        fig.update(process=proc, command=cmd, precision=mt["precision"],
                   checkpoint=str(checkpoint) if checkpoint.exists() else None)
        self.report["translation"]["train"][system] = fig
        ok = proc["returncode"] == 0 and checkpoint.exists()
        if not ok:
            fig["log_tail"] = tail(Path(proc["log"]))
        self.checks.set(f"mt.{system}.train.exit_ok", proc["returncode"], ok,
                        note="timed out" if proc["timed_out"]
                        else ("" if ok else "see translation.train.%s.log_tail" % system))
        self.checks.set(f"mt.{system}.train.updates", fig["updates"], fig["updates"] >= mt["min_updates"])
        first, last = fig["first_loss"], fig["last_loss"]
        self.checks.set(f"mt.{system}.train.loss_falls", last, finite(first) and finite(last) and last < first,
                        threshold=f"< first quarter's mean ({fmt(first)})")
        self.checks.set(f"mt.{system}.train.no_nan", fig["nonfinite"] + fig["fatal_errors"],
                        fig["nonfinite"] == 0 and fig["fatal_errors"] == 0 and fig["updates"] > 0)
        valid, first = fig["valid_loss"], fig["first_loss"]
        self.checks.set(f"mt.{system}.train.valid_sane", valid, finite(valid) and finite(first) and valid < first,
                        threshold=f"final validation loss < first quarter's training loss ({fmt(first)})")
        if mt["precision"] == "fp16":
            limit = max(1, 0.01 * fig["updates"])
            later = fig["overflows"] - fig["calibration_overflows"]
            self.checks.set(f"mt.{system}.train.fp16_overflow", later, later <= limit,
                            threshold=f"<= 1% of updates ({limit:.0f})",
                            note=f"{fig['calibration_overflows']} more while the loss scale calibrated "
                                 f"(before the first log interval); final loss scale {fmt(fig['loss_scale'])}")
        else:
            self.checks.set(f"mt.{system}.train.fp16_overflow", fig["overflows"], None,
                            note="not applicable on CPU (fp32)")
        log(f"{system}: {fig['updates']} updates, fairseq wps {fmt(fig['wps'])} (median), "
            f"loss {fmt(first)} -> {fmt(last)}, valid loss {fmt(fig['valid_loss'])}, final lr {fmt(fig['final_lr'])}, "
            f"{fig['overflows']} overflow(s), {fmt(fig['parameters'])} parameters")

    def mt_ratios(self) -> None:
        train = self.report["translation"]["train"]
        name = "mt.goal.resmlp_wps_vs_transformer"
        if not all(s in train and finite(train[s].get("wps")) and train[s]["wps"] > 0 for s in SYSTEMS):
            return
        ratio = train["resmlp"]["wps"] / train["transformer"]["wps"]
        self.report["translation"]["ratios"] = {
            "wps": ratio,
            "words_per_train_second": _ratio(train["resmlp"].get("words_per_train_second"),
                                             train["transformer"].get("words_per_train_second")),
            "updates": _ratio(train["resmlp"]["updates"], train["transformer"]["updates"]),
            "parameters": _ratio(train["resmlp"].get("parameters"), train["transformer"].get("parameters")),
        }
        if self.mode == "gpu":
            self.checks.set(name, round(ratio, 3), ratio >= WPS_GOAL_RATIO)
        else:
            self.checks.set(name, round(ratio, 3), None, note="not applicable on CPU")

    def mt_generate(self, cap: float) -> None:
        """Both systems in one worker process (one start-up), each result saved as it comes."""
        mt = self.prof["mt"]
        train = self.report["translation"]["train"]
        checkpoints = {s: train[s]["checkpoint"] for s in SYSTEMS if train.get(s, {}).get("checkpoint")}
        if not checkpoints:
            raise RuntimeError("no checkpoint from mt_train_*")
        config = {"data": str(self.mt_data_dir()), "checkpoints": checkpoints, "batch_size": mt["gen_batch"],
                  "fp16": mt["gen_fp16"], "extra": mt["gen_extra"], "threads": 1 if self.mode == "dry-run" else None}
        proc = run_worker("mt_generate", config, self.workdir / "mt_generate.json", cap, self.mode,
                          self.workdir / "logs" / "mt_generate.log")
        res = proc.pop("result")
        gen = self.report["translation"]["generate"]
        gen["process"] = proc
        for system in SYSTEMS:
            r = res.get(system)
            if not r:
                continue
            gen[system] = r
            if "error" in r:
                continue
            self.checks.set(f"mt.{system}.generate.complete", r["sentences"], r["sentences"] == r["references"],
                            threshold=f"== {r['references']} references")
            if mt["bleu_min"] is not None:
                self.checks.set(f"mt.{system}.generate.bleu", r["sacrebleu"], r["sacrebleu"] >= mt["bleu_min"])
            else:
                self.checks.set(f"mt.{system}.generate.bleu", r["sacrebleu"], None,
                                note="not applicable on CPU (tiny model, a few updates of training)")
            log(f"{system}: sacreBLEU {r['sacrebleu']:.2f}, {r['sentences_per_second']:.1f} sentences/s "
                f"({'fp16' if mt['gen_fp16'] else 'fp32'})")
        errors = ([f"{s}: {res[s]['error']}" for s in SYSTEMS if "error" in res.get(s, {})]
                  + ([res["error"]] if "error" in res else []))
        if errors or proc["returncode"] != 0 or set(res) & set(SYSTEMS) != set(checkpoints):
            raise RuntimeError("; ".join(errors)
                               or f"worker exit {proc['returncode']} (timed out: {proc['timed_out']}): "
                                  f"{tail(Path(proc['log']), 1500)}")

    # -- vision --------------------------------------------------------------------------------

    def vision_bench(self, cap: float) -> None:
        beside_prep = self.prep_thread is not None and self.prep_thread.is_alive()  # CPU work only, recorded
        proc = run_worker("vision_bench", {**self.prof["vision"], "mode": self.mode},
                          self.workdir / "vision_bench.json", cap, self.mode,
                          self.workdir / "logs" / "vision_bench.log")
        res = proc.pop("result")
        self.report["vision"]["bench"] = {"process": proc, "ran_beside_mt_prep": beside_prep, **res}
        if "device" in res:
            self.report["machine"].update(res["device"])
        if "equivalence" in res:
            eq = res["equivalence"]
            self.checks.set("vision.bench.ours_matches_timm", eq["max_abs_ours_vs_timm"],
                            eq["max_abs_ours_vs_timm"] <= 1e-4)
            self.checks.set("vision.bench.folded_matches_ours", eq["max_abs_folded_vs_ours"],
                            eq["max_abs_folded_vs_ours"] <= 1e-4)
        if "train_step" in res:
            losses = res["train_step"]["last_loss"]
            self.checks.set("vision.bench.train_loss_finite", max(losses.values()),
                            all(finite(v) for v in losses.values()))
        if "inference" in res:
            ips = res["inference"]["img_per_s"]["ours_folded"]
            self.checks.set("vision.goal.s12_folded_img_s", round(ips, 1),
                            ips >= PAPER_S12_IMG_S if self.mode == "gpu" else None,
                            note="" if self.mode == "gpu" else "not applicable on CPU")
        if "error" in res or proc["returncode"] != 0:
            raise RuntimeError(res.get("error")
                               or f"worker exit {proc['returncode']} (timed out: {proc['timed_out']}): "
                                  f"{tail(Path(proc['log']), 1500)}")

    def vision_compile(self, cap: float) -> None:
        cfg = {**self.prof["vision"], "mode": self.mode}
        proc = run_worker("vision_compile", cfg, self.workdir / "vision_compile.json", cap, self.mode,
                          self.workdir / "logs" / "vision_compile.log")
        res = proc.pop("result")
        self.report["vision"]["compile"] = {"process": proc, **res}
        variants = res.get("variants", {})
        compiled = [k for k, v in variants.items() if v.get("status") == "ok"]
        self.checks.set("vision.compile.all_variants", len(compiled),
                        len(compiled) == len(self.prof["vision"]["compile_variants"]),
                        note=", ".join(f"{k}: {v.get('status')}" for k, v in variants.items()))
        diffs = [v["rel_diff_vs_eager"] for v in variants.values() if "rel_diff_vs_eager" in v]
        if diffs:
            self.checks.set("vision.compile.matches_eager", max(diffs), all(finite(d) and d <= 0.05 for d in diffs))
        ips = res.get("img_per_s", {}).get("ours_folded_compiled")
        if ips is not None:
            self.checks.set("vision.goal.s12_folded_compiled_img_s", round(ips, 1),
                            ips >= PAPER_S12_IMG_S if self.mode == "gpu" else None,
                            note="" if self.mode == "gpu"
                            else f"not applicable on CPU (backend {cfg['compile_backend']})")
        if "error" in res or proc["returncode"] != 0:
            raise RuntimeError(res.get("error")
                               or f"worker exit {proc['returncode']} (timed out: {proc['timed_out']}): "
                                  f"{tail(Path(proc['log']), 1500)}")

    def cifar_stage(self, name: str) -> tuple[Path, Path]:
        """``(CIFAR-10 root, a fresh empty work folder for stage name)`` of a stage that runs the
        vision CLIs on real images; a missing CIFAR-10 fails the stage with where to put it."""
        if self.data_root is None or not (self.data_root / "cifar10" / "train").is_dir():
            raise RuntimeError("CIFAR-10 not found (set RESMLP_DATA or --data-root to the folder holding cifar10/)")
        out = self.workdir / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        return self.data_root / "cifar10", out

    def vision_cli(self, cap: float) -> None:
        cli = self.prof["cli"]
        data, out = self.cifar_stage("vision_cli")
        deadline = time.monotonic() + cap
        res = self.report["vision"]["cli"]
        res["data"] = str(data)
        runs = {
            # the teacher: LAMB 5e-3 as vision/configs/cifar10_teacher.yaml; the student: the paper's
            # LAMB 5e-3 x batch / 512 (vision/configs/imagenet_s12.yaml)
            "teacher": (vision_config(cli, "regnety_004", {}, cli["teacher_epochs"], lr=5e-3, lr_scale="none"), []),
            "student_hard": (vision_config(cli, "resmlp_s12", {}, cli["student_epochs"], lr=5e-3, lr_scale="linear"),
                             ["--distillation-type", "hard", "--teacher-path", str(out / "teacher" / "best.pth")]),
        }
        total_steps, all_finite = 0, True
        for name, (config, extra) in runs.items():
            cfg_path = out / f"{name}.yaml"
            import yaml

            cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
            cmd = [sys.executable, "-m", "vision.train", "--config", str(cfg_path), "--data-dir", str(data),
                   "--val-split", "test", "--output", str(out / name), *extra]
            left = deadline - time.monotonic()
            if left < 5:
                res[name] = {"status": "skipped: out of time"}
                continue
            # the teacher may use at most 40% of what is left, so the student always gets its turn
            timeout = left * 0.4 if name == "teacher" else left
            log(f"vision.train {name}: {' '.join(cmd[3:])}")
            proc = run_logged(cmd, self.workdir / "logs" / f"vision_cli_{name}.log", timeout, env=base_env(self.mode),
                              what=f"vision.train {name}")
            fig = vision_train_figures(out / name / "log.txt")
            fig.update(process=proc, command=cmd, config=config)
            done = proc["returncode"] == 0 and fig["epochs_done"] == config["epochs"]
            if not done:
                fig["log_tail"] = tail(Path(proc["log"]))
            res[name] = fig
            total_steps += fig["steps"]
            all_finite &= bool(fig["train_losses"]) and all(finite(v) for v in fig["train_losses"])
            check = "vision.cli.teacher" if name == "teacher" else "vision.cli.student_hard_distillation"
            note = f"{fig['epochs_done']}/{config['epochs']} epochs, val top-1 {fmt(fig.get('val_top1'))}"
            if name == "student_hard":
                done = done and fig["distillation"] == "hard"
                note += f", distillation {fig['distillation']}"
            self.checks.set(check, proc["returncode"], done, note=note + (", timed out" if proc["timed_out"] else ""))
            log(f"vision.train {name}: {fig['steps']} steps, {fmt(fig.get('img_per_s'))} img/s (last epoch), "
                f"losses {[round(v, 3) for v in fig['train_losses']]}, val top-1 {fmt(fig.get('val_top1'))}")
        res["total_steps"] = total_steps
        self.checks.set("vision.cli.steps", total_steps, total_steps >= cli["min_steps"])
        self.checks.set("vision.cli.loss_finite", all_finite, all_finite)

    def vision_dino(self, cap: float) -> None:
        """vision.dino for one epoch, ``--resume auto`` for the next, vision.knn of the result."""
        d = self.prof["dino"]
        data, out = self.cifar_stage("vision_dino")
        deadline = time.monotonic() + cap
        res = self.report["vision"]["dino"]
        threads = ["--threads", str(d["threads"])] if d["threads"] else []
        base = [sys.executable, "-m", "vision.dino", "--config", d["config"], "--data-dir", str(data), "--output",
                str(out / "dino"), "--max-per-class", str(d["max_per_class"]), "--batch-size", str(d["batch"]),
                "--epochs", str(d["epochs"]), "--warmup-epochs", "1", "--warmup-teacher-temp-epochs", "1", "--workers",
                str(d["workers"]), "--dataset-cache", "memory", "--mean", *map(str, CIFAR10_MEAN), "--std",
                *map(str, CIFAR10_STD), "--log-interval", "5", *threads, *d["extra"]]
        runs = {"first": base + ["--stop-after-epoch", "0"], "resumed": base + ["--resume", "auto"]}
        ok = True
        for name, cmd in runs.items():
            left = deadline - time.monotonic()
            if left < 5:
                res[name] = {"status": "skipped: out of time"}
                ok = False
                continue
            log(f"vision.dino {name}: {' '.join(map(str, cmd[3:]))}")
            # the first run may use at most 45% of what is left, so the resume and k-NN get their turn
            proc = run_logged(cmd, self.workdir / "logs" / f"vision_dino_{name}.log",
                              left * 0.45 if name == "first" else left * 0.7, env=base_env(self.mode),
                              what=f"vision.dino {name}")
            res[name] = {"process": proc, "command": cmd}
            ok &= proc["returncode"] == 0
            if proc["returncode"] != 0:
                res[name]["log_tail"] = tail(Path(proc["log"]))
        text = (out / "dino" / "log.txt").read_text(errors="replace") if (out / "dino" / "log.txt").exists() else ""
        epochs = [(int(m.group(1)), float(m.group(2)), float(m.group(3))) for m in _DINO_EPOCH.finditer(text)]
        resumed = "resumed from" in text
        res.update(epochs=[e[0] for e in epochs], losses=[e[1] for e in epochs], img_per_s=[e[2] for e in epochs],
                   resumed=resumed)
        done = ok and sorted({e[0] for e in epochs}) == list(range(d["epochs"])) and resumed
        self.checks.set("vision.dino.train_resume", len(epochs), done,
                        note=f"epochs {res['epochs']}, losses {[round(v, 3) for v in res['losses']]}, "
                             f"resumed: {resumed}")
        finite_losses = bool(epochs) and all(finite(e[1]) for e in epochs)
        self.checks.set("vision.dino.loss_finite", finite_losses, finite_losses)
        log(f"vision.dino: epochs {res['epochs']}, losses {res['losses']}, img/s {res['img_per_s']}, resumed {resumed}")
        left = deadline - time.monotonic()
        if not (out / "dino" / "last.pth").exists() or left < 5:
            self.checks.set("vision.dino.knn", None, False, note="no checkpoint" if left >= 5 else "out of time")
            return
        knn = [sys.executable, "-m", "vision.knn", "--checkpoint", str(out / "dino" / "last.pth"), "--data-dir",
               str(data), "--val-split", "test", "--max-per-class", str(d["knn_max_per_class"]), "--val-max-per-class",
               str(d["knn_val_max_per_class"]), "--workers", str(d["workers"]), "--k", "20", "--out", str(out / "knn"),
               *threads]
        proc = run_logged(knn, self.workdir / "logs" / "vision_dino_knn.log", left, env=base_env(self.mode),
                          what="vision.knn")
        report = json.loads((out / "knn.json").read_text()) if (out / "knn.json").exists() else {}
        top1 = report.get("results", {}).get("20", {}).get("top1")
        res["knn"] = {"process": proc, "command": knn, "top1": top1}
        self.checks.set("vision.dino.knn", top1, proc["returncode"] == 0 and finite(top1),
                        note=f"k=20 on {d['knn_max_per_class']} train / "
                             f"{d['knn_val_max_per_class']} test images a class")


def _ratio(a: Any, b: Any) -> Optional[float]:
    return a / b if finite(a) and finite(b) and b else None


def vision_config(cli: dict, model: str, model_kwargs: dict, epochs: int, lr: float, lr_scale: str) -> dict:
    """A vision.train config (its keys are the CLI's options): the light CIFAR-10 recipe of
    vision/configs/cifar10_student.yaml at ``cli['img']`` px (RandomResizedCrop up-samples the
    32-px images), without RandAugment / Mixup / erasing, which only pay off over many epochs."""
    cfg = {
        "model": model, "model_kwargs": model_kwargs, "img_size": cli["img"], "batch_size": cli["batch"],
        "epochs": epochs, "opt": "lamb", "lr": lr, "lr_scale": lr_scale, "lr_base_size": 512, "weight_decay": 0.05,
        "sched": "cosine", "sched_on_updates": True,
        "warmup_epochs": 0.5 if epochs > 1 else 0.2, "warmup_lr": 1.0e-6, "min_lr": 1.0e-5, "drop_path": 0.0,
        "train_crop": "rrc", "hflip": 0.5, "aa": "none", "color_jitter": 0.0, "reprob": 0.0, "repeated_aug": 0,
        "mixup": 0.0, "cutmix": 0.0, "smoothing": 0.1, "model_ema": False, "crop_pct": 1.0, "interpolation": "bicubic",
        "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD), "dataset_cache": "memory",
        "max_per_class": cli["max_per_class"], "val_max_per_class": cli["val_max_per_class"], "workers": cli["workers"],
        "amp": True, "amp_dtype": "bfloat16", "distillation_alpha": 0.5, "distillation_tau": 1.0, "log_interval": 20,
    }
    if cli["threads"]:
        cfg["threads"] = cli["threads"]
    return cfg


_DINO_EPOCH = re.compile(r"epoch (\d+): DINO loss (\S+), (\S+) img/s")
_EPOCH = re.compile(r"epoch (\d+): train loss (\S+), (\S+) img/s, (\S+) min(?:; "
                    r"val top-1 (\S+) top-5 (\S+) loss (\S+))?")


def vision_train_figures(log_txt: Path) -> Dict[str, Any]:
    text = log_txt.read_text(errors="replace") if log_txt.exists() else ""
    m = re.search(r"(\d+) steps per epoch", text)
    per_epoch = int(m.group(1)) if m else 0
    epochs = [e.groups() for e in _EPOCH.finditer(text)]
    dist = re.search(r"distillation: (\w+)", text)
    fig: Dict[str, Any] = {
        "steps_per_epoch": per_epoch,
        "epochs_done": len(epochs),
        "steps": per_epoch * len(epochs),
        "train_losses": [float(e[1]) for e in epochs],
        "img_per_s_by_epoch": [float(e[2]) for e in epochs],
        "img_per_s": float(epochs[-1][2]) if epochs else None,
        "val_top1": float(epochs[-1][4]) if epochs and epochs[-1][4] else None,
        "distillation": dist.group(1) if dist else "none",
    }
    return fig


# ----------------------------------------------------------------------------------------------
# Workers (child processes)
# ----------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, config: dict, out: Path) -> None:
        self.config, self.out = config, out
        self.result: Dict[str, Any] = {}

    def save(self) -> None:
        from resmlp_core.io import write_text_atomic

        write_text_atomic(self.out, json.dumps(self.result, indent=1, default=str))

    def left(self) -> float:
        return self.config["deadline_epoch"] - time.time()


def worker_mt_generate(w: Worker) -> None:
    from mt_tools.evaluate import evaluate

    c = w.config
    extra = (["--fp16"] if c["fp16"] else []) + list(c.get("extra", []))
    refs = (Path(c["data"]) / "ref" / "test.de").read_text(encoding="utf-8").splitlines()
    for system, checkpoint in c["checkpoints"].items():
        try:
            r = evaluate(Path(c["data"]), Path(checkpoint), split="test", beam=4, batch_size=c["batch_size"],
                         extra_args=extra, num_samples=3, threads=c.get("threads"))
        except Exception as err:  # the other system still gets its turn
            w.result[system] = {"error": f"{type(err).__name__}: {err}"[-2000:]}
            w.save()
            continue
        w.result[system] = dict(
            split=r.split, sentences=r.sentences, references=len(refs), sacrebleu=r.sacrebleu,
            signature=r.sacrebleu_signature, tok_bleu=r.tok_bleu, tok_bleu_compound_split=r.tok_bleu_compound_split,
            sentences_per_second=r.sentences_per_second, tokens_per_second=r.tokens_per_second,
            generation_seconds=r.generation_seconds, fp16=c["fp16"], beam=4, batch_size=c["batch_size"],
            samples=r.samples, command=r.command)
        w.save()
        print(f"{system}: sacreBLEU {r.sacrebleu}, {r.sentences_per_second:.1f} sentences/s", flush=True)


def _vision_setup(c: dict):
    import torch

    import vision  # noqa: F401  (registers resmlp_s12 with timm)

    device = torch.device("cuda" if torch.cuda.is_available() and c["mode"] == "gpu" else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    dtype = getattr(torch, c["autocast"]) if c.get("autocast") else None

    def amp():
        return (torch.autocast(device.type, dtype=dtype) if dtype is not None
                else torch.autocast(device.type, enabled=False))

    return torch, device, amp


def _models(torch, device, img: int):
    import timm
    from timm.utils import reparameterize_model

    torch.manual_seed(0)
    ours = timm.create_model("resmlp_s12", img_size=img).to(device).eval()
    ref = timm.create_model("resmlp_12_224", img_size=img, pretrained=False)
    ref.load_state_dict(ours.state_dict())  # timm's own implementation, the same weights
    ref = ref.to(device).eval()
    folded = reparameterize_model(ours)  # a folded copy
    return {"timm": ref, "ours": ours, "ours_folded": folded}


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_vision_bench(w: Worker) -> None:
    c = w.config
    torch, device, amp = _vision_setup(c)
    import timm
    from timm.optim import create_optimizer_v2

    from vision.speed import count_flops, interleaved, matmul_gflops

    res = w.result
    res["device"] = {"torch_device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        res["device"].update(gpu_name_torch=p.name, compute_capability=f"{p.major}.{p.minor}",
                             gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                             cudnn=torch.backends.cudnn.version())
    res["settings"] = {k: c[k] for k in ("img", "train_batch", "infer_batch", "rounds", "train_rounds", "autocast")}
    w.save()
    res["matmul_tflops_bf16" if device.type == "cuda" else "matmul_tflops_fp32"] = round(
        matmul_gflops(device, torch.bfloat16 if device.type == "cuda" else torch.float32, c["matmul_n"], 1.0) / 1e3, 2)
    print(f"matmul: {res}", flush=True)

    models = _models(torch, device, c["img"])
    ours, ref, folded = models["ours"], models["timm"], models["ours_folded"]
    res["params"] = sum(p.numel() for p in ours.parameters())
    res["folded_blocks"] = sum(1 for m in folded.modules() if type(m).__name__ == "FoldedResMLPBlock")
    res["gflops_per_image"] = round(count_flops(ours, torch.randn(1, 3, c["img"], c["img"], device=device)) / 1e9, 3)
    # equivalence in fp32 with TF32 off (cuDNN allows TF32 convolutions by default)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    x = torch.randn(2, 3, c["img"], c["img"], device=device)
    with torch.inference_mode():
        y_ref, y, y_fold = ref(x).float(), ours(x).float(), folded(x).float()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    res["equivalence"] = {"max_abs_ours_vs_timm": (y - y_ref).abs().max().item(),
                          "max_abs_folded_vs_ours": (y_fold - y).abs().max().item(),
                          "max_abs_logit": y.abs().max().item()}
    w.save()
    print(f"equivalence: {res['equivalence']}", flush=True)

    # training step: forward, loss, backward, LAMB step; bf16 autocast; synthetic batch
    b = c["train_batch"]
    xb = torch.randn(b, 3, c["img"], c["img"], device=device)
    yb = torch.randint(0, 1000, (b,), device=device)
    steps, last = {}, {}
    for name, arch in (("timm", "resmlp_12_224"), ("ours", "resmlp_s12")):
        m = timm.create_model(arch, img_size=c["img"], drop_path_rate=0.05)
        m.load_state_dict(ours.state_dict())
        m = m.to(device).train()
        opt = create_optimizer_v2(m, opt="lamb", lr=1e-6, weight_decay=0.2)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step(m=m, opt=opt, name=name) -> None:
            with amp():
                loss = loss_fn(m(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last[name] = loss.detach()

        steps[name] = step
    times = interleaved(steps, c["train_rounds"], device)
    res["train_step"] = {
        "batch": b, "optimizer": "lamb", "drop_path": 0.05,
        "img_per_s": {k: b / statistics.median(v) for k, v in times.items()},
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "last_loss": {k: v.float().item() for k, v in last.items()},
    }
    res["train_step"]["ours_vs_timm"] = res["train_step"]["img_per_s"]["ours"] / res["train_step"]["img_per_s"]["timm"]
    if device.type == "cuda":
        res["train_step"]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    w.save()
    print(f"train step: {res['train_step']['img_per_s']}", flush=True)
    del steps, m, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # inference at batch infer_batch, eval mode, inference_mode, bf16 autocast
    b = c["infer_batch"]
    xi = torch.randn(b, 3, c["img"], c["img"], device=device)

    def make(m):
        def run() -> None:
            with torch.inference_mode(), amp():
                m(xi)

        return run

    times = interleaved({k: make(m) for k, m in models.items()}, c["rounds"], device)
    ips = {k: b / statistics.median(v) for k, v in times.items()}
    res["inference"] = {
        "batch": b, "img_per_s": ips, "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ours_vs_timm": ips["ours"] / ips["timm"], "folded_vs_timm": ips["ours_folded"] / ips["timm"],
        "folded_vs_paper_v100": ips["ours_folded"] / PAPER_S12_IMG_S,
    }
    w.save()
    print(f"inference: {ips}", flush=True)


def worker_vision_compile(w: Worker) -> None:
    c = w.config
    torch, device, amp = _vision_setup(c)
    from vision.speed import interleaved

    res = w.result
    res["backend"] = c["compile_backend"]
    res["variants"] = {}
    models = _models(torch, device, c["img"])
    b = c["infer_batch"]
    xi = torch.randn(b, 3, c["img"], c["img"], device=device)
    compiled = {}
    for name in c["compile_variants"]:
        entry = res["variants"][name] = {}
        if w.left() < c["compile_min_s"]:
            entry["status"] = "skipped: out of time"
            w.save()
            continue
        eager = models[name]
        with torch.inference_mode(), amp():
            y_eager = eager(xi).float()
        # Inductor's defaults, stated: no GEMM autotuning. On the H100 (torch 2.11) the first try
        # spent > 120 s in select_algorithm benchmarking GEMM choices for one variant.
        if c["compile_backend"] == "inductor":
            import torch._inductor.config as inductor_config

            print("inductor settings:",
                  {k: v for k, v in os.environ.items() if k.startswith(("TORCHINDUCTOR", "TORCH_COMPILE"))},
                  {k: getattr(inductor_config, k, None) for k in ("max_autotune", "max_autotune_gemm", "freezing")},
                  flush=True)
        options = {"max_autotune": False, "max_autotune_gemm": False, "coordinate_descent_tuning": False} \
            if c["compile_backend"] == "inductor" else None
        cm = torch.compile(eager, backend=c["compile_backend"], options=options)
        t = time.perf_counter()
        try:
            with torch.inference_mode(), amp():
                y = cm(xi).float()
            _sync(torch, device)
        except Exception as err:
            entry.update(status="failed", error=f"{type(err).__name__}: {err}"[:1500])
            w.save()
            continue
        entry.update(status="ok", compile_s=round(time.perf_counter() - t, 1),
                     rel_diff_vs_eager=(y - y_eager).abs().max().item() / max(y_eager.abs().max().item(), 1e-6))
        compiled[f"{name}_compiled"] = cm
        w.save()
        print(f"compiled {name}: {entry}", flush=True)
    if not compiled:
        return

    def make(m):
        def run() -> None:
            with torch.inference_mode(), amp():
                m(xi)

        return run

    fns = {k: make(m) for k, m in compiled.items()}
    fns["ours_folded_eager"] = make(models["ours_folded"])
    times = interleaved(fns, c["rounds"], device)
    res["img_per_s"] = {k: b / statistics.median(v) for k, v in times.items()}
    res["batch"] = b
    w.save()
    print(f"compiled inference: {res['img_per_s']}", flush=True)


WORKERS = {"mt_generate": worker_mt_generate, "vision_bench": worker_vision_bench,
           "vision_compile": worker_vision_compile}


def worker_main(name: str, config_path: Path, out: Path) -> int:
    w = Worker(json.loads(config_path.read_text()), out)
    try:
        WORKERS[name](w)
        return 0
    except Exception as err:
        w.result["error"] = f"{type(err).__name__}: {err}"[:2000]
        w.result["traceback"] = traceback.format_exc()[-4000:]
        w.save()
        traceback.print_exc()
        return 1


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def markdown(r: Dict[str, Any]) -> str:
    m = r["machine"]
    gpu = m.get("gpu_name") or m.get("gpu_name_torch")
    lines = [
        f"# GPU acceptance ({r['mode']}): {'PASSED' if r['passed'] else 'FAILED'}",
        "",
        f"Card: {gpu or 'none (CPU)'}" + (f", driver {m.get('driver')}, {m.get('gpu_memory')}" if gpu else "")
        + (f", compute capability {m['compute_capability']}" if m.get("compute_capability") else "")
        + f"; torch {m.get('torch')} (CUDA {m.get('cuda')}), fairseq {m.get('fairseq')}, timm {m.get('timm')}, "
          f"Python {m.get('python')}; "
        f"{m.get('cpu_count')} CPU cores ({m.get('cpu', '?')}).",
        f"Started {r['started_utc']}; wall clock {r['wall_seconds']:.0f}s of a {r['deadline_s']:.0f}s deadline. "
        f"Command: `{r['command']}`",
        "",
        "| section | item | value | threshold | status |",
        "|---|---|---:|---|---|",
    ]
    def row(*cells: Any) -> str:
        return "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |"

    for c in r["checks"]:
        status = c["status"] + (" (goal)" if c["kind"] == "goal" else "")
        note = f" — {c['note'][:300]}" if c.get("note") else ""
        lines.append(row(c["section"], c["name"], fmt(c["value"]), c["threshold"], status + note))
    for f in figure_rows(r):
        lines.append(row(f[0], f[1], f[2], "", "figure"))
    lines += ["", "Stages:", ""]
    for name, s in r.get("stages", {}).items():
        lines.append(f"- {name}: {s['status']}, {s.get('seconds', 0):.1f}s (budget {s['budget_s']}s, "
                     f"started at {s['started_at_s']}s)"
                     + (f" — {s['error']}" if s.get("error") else ""))
    lines += ["",
              "Goals (the paper's speed claims) are reported but only count in the exit status with --strict-goals.",
              ""]
    return "\n".join(lines) + "\n"


def figure_rows(r: Dict[str, Any]) -> List[tuple]:
    rows: List[tuple] = []
    t = r["translation"]
    for s, f in t.get("train", {}).items():
        rows.append(("translation", f"{s} train words/s (fairseq wps, median)", fmt(f.get("wps"))))
        rows.append(("translation", f"{s} updates / params / valid loss / final lr",
                     f"{fmt(f.get('updates'))} / {fmt(f.get('parameters'))} / {fmt(f.get('valid_loss'))} / "
                     f"{fmt(f.get('final_lr'))}"))
    for s, g in t.get("generate", {}).items():
        if isinstance(g, dict) and "sentences_per_second" in g:
            rows.append(("translation", f"{s} generate sentences/s (beam 4)", fmt(g["sentences_per_second"])))
    if t.get("ratios"):
        rows.append(("translation", "ResMLP / Transformer words/s", fmt(t["ratios"].get("wps"))))
    v = r["vision"]
    b = v.get("bench", {})
    if "train_step" in b:
        ts = b["train_step"]
        rows.append(("vision", f"S12 train img/s ours / timm (batch {ts['batch']})",
                     f"{fmt(ts['img_per_s']['ours'])} / {fmt(ts['img_per_s']['timm'])} ({ts['ours_vs_timm']:.2f}x)"))
    if "inference" in b:
        inf = b["inference"]
        ips = inf["img_per_s"]
        rows.append(("vision", f"S12 inference img/s folded / ours / timm (batch {inf['batch']}); "
                               f"paper V100 {PAPER_S12_IMG_S:.0f}",
                     f"{fmt(ips['ours_folded'])} / {fmt(ips['ours'])} / {fmt(ips['timm'])}"))
    comp = v.get("compile", {})
    if comp.get("img_per_s"):
        rows.append(("vision", f"S12 compiled inference img/s ({comp.get('backend')})",
                     ", ".join(f"{k} {fmt(x)}" for k, x in comp["img_per_s"].items())))
    dn = v.get("dino", {})
    if dn.get("epochs"):
        rows.append(("vision", "vision.dino: DINO loss by epoch / img/s (last epoch) / k-NN top-1",
                     f"{', '.join(fmt(x) for x in dn['losses'])} / {fmt(dn['img_per_s'][-1])} / "
                     f"{fmt(dn.get('knn', {}).get('top1'))}"))
    for name in ("teacher", "student_hard"):
        f = v.get("cli", {}).get(name)
        if f and "steps" in f:
            rows.append(("vision", f"vision.train {name}: steps / img/s / val top-1",
                         f"{f['steps']} / {fmt(f.get('img_per_s'))} / {fmt(f.get('val_top1'))}"))
    return rows


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same stages on the CPU at tiny sizes (under 2 minutes)")
    p.add_argument("--out",
                   help="results path without extension (default: results/gpu_acceptance, "
                        "or results/gpu_acceptance_dryrun with --dry-run)")
    p.add_argument("--workdir", help="data slices, checkpoints, logs (default: runs/gpu_acceptance[_dryrun])")
    p.add_argument("--data-root",
                   help="folder holding multi30k/ and cifar10/ (default: $RESMLP_DATA, else ../shared/data)")
    p.add_argument("--mt-data", help="binarized Multi30k En-De (default: data-bin/multi30k.en-de, prepared if absent)")
    p.add_argument("--deadline-s", type=float, help="global deadline in seconds (default: 480; 115 with --dry-run)")
    p.add_argument("--mt-minutes", type=float,
                   help="training minutes per translation system (default: 0.75; with --dry-run 0.5, a cap "
                   "behind its budget of 8 updates)")
    p.add_argument("--mt-warmup", type=int,
                   help="Adagrad warm-up updates (default: 32000, the paper's; 1000 with --dry-run)")
    p.add_argument("--stages", nargs="+", choices=sorted(STAGE_GROUPS),
                   help="run only these groups of stages (default: all); the checks of the others are reported "
                        "'not selected' and do not count as failures")
    p.add_argument("--strict-goals", action="store_true", help="count the paper's speed goals in the exit status")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--worker-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.worker_config, args.worker_out)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA GPU is visible: run on the GPU machine, or use --dry-run for the CPU rehearsal")
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    return Acceptance(args).run()


if __name__ == "__main__":
    sys.exit(main())
