"""The translation race on one GPU: ResMLP against the Transformer for equal GPU minutes.

    make gpu-race                          # one H100/H200, at most 8 minutes
    make gpu-race ARGS=--dry-run           # the same code on the CPU at tiny sizes (< 2 minutes)
    python -m benchmarks.gpu_race [--dry-run] [--minutes M] [--max-tokens N] [--pairs small base]

On the GPU a system trains several times more words per second than on the CPU, where ResMLP's
edge is 1.2x (results/mt_race.md); if the edge is larger there, ResMLP gets that many more
updates in the same GPU time and the race may come out otherwise. This study measures it.

Pairs, each the two systems trained one after the other (never two at a time on the card) for
the same wall-clock minutes (fairseq ``--stop-time-hours``) on Multi30k En-De:

* ``small``: the models of the CPU race (results/mt_race.md): ``resmlp_mt_small`` (3+3 layers,
  d 256, MLP 1024) against the Transformer of the same depth, width, MLP and heads.
* ``base``: ResMLP-6 (``--arch resmlp_mt``: 6+6 layers, d 512, MLP 2048) against
  Transformer-base of the same depth and width (8 heads); run when the deadline still allows.

Recipe: each system's tuned CPU recipe (mt_tools.recipes: the best of the sweep in
results/mt_sweep.json; Adam, inverse-sqrt schedule, label smoothing 0.1, dropout 0.1) through
scripts/train_multi30k.sh, adapted to the GPU alike for both: ``--fp16`` (fairseq's
FP16Optimizer: fp16 model, fp32 master weights, dynamic loss scale from 128, halved on an
overflow; not ``--bf16``, which in fairseq 0.12 implies ``--tpu``, nor ``--amp``, whose
optimizer unscales the gradients twice: benchmarks/gpu_acceptance.py), ``--max-tokens`` 8192
(4x the CPU's 2048: the same for both systems; the learning rate and warm-up are the CPU's),
no checkpoint or validation until the time is up (then one of each), no optimizer state saved.
The paper's Adagrad recipe is not used: ResMLP-6 diverged with it on the H100 (README).

Reported per system: updates, training words/s (fairseq's ``wps`` per log interval: the median
over the run, the first interval (CUDA start-up) excluded, with quartiles and extremes),
parameters, the final learning rate and validation loss, and sacreBLEU of the last checkpoint on
the valid and test splits (mt_tools.evaluate: fairseq-generate beam 4, ``--fp16`` on the GPU).
Per pair: the ratios ResMLP / Transformer and the race's goal, ResMLP >= Transformer + 1.0
test sacreBLEU. The report also states what the GPU acceptance run measured of the folded
vision model and torch.compile (results/gpu_acceptance.json), with why.

Time: a global deadline (480 s on the GPU) covers data preparation (only when the binarized
``data-bin/multi30k.en-de`` was not carried), the trainings and the scoring (all checkpoints at
once, after the last training, in one child process that the deadline can stop). A pair starts
only if both its trainings and the scoring still fit; ``base`` is reported "skipped: out of
time" otherwise. Results: results/gpu_race.{json,md} with paths relative to the repo or the
work folder; logs under runs/gpu_race/logs.

``--dry-run`` runs the same code on the CPU: a Multi30k slice (1000 training pairs, 24
valid/test, 600-piece vocabulary), the ``small`` pair at its real sizes and the ``base`` pair at
2 layers, d 64, 6 updates of training each (an update budget, so that a busy machine does the
same work; 30 s at most; 512 tokens per batch, warm-up 10 updates), fp32, one thread, the two
pairs side by side (their timings mean nothing), short generation limits. Its
budgets are sized for the idle 2-core bench machine and stretched by this machine's measured
slowdown (benchmarks.harness.measure_slowdown), so a busy machine does not fail it. Its results
go to runs/gpu_race_dryrun/ (or ``--out``), never to results/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchmarks.harness import (
    REPO,
    Checks,
    base_env,
    data_ready,
    elapsed,
    start_clock,
    find_data_root,
    finite,
    fmt,
    json_safe,
    log,
    machine_info,
    measure_slowdown,
    prepare_command,
    run_logged,
    scrub_paths,
    slice_raw,
    tail,
)
from benchmarks.common import write_result
from benchmarks.fairseq_runs import TINY_RESMLP, TINY_TRANSFORMER, TRANSFORMER_BASE, fairseq_figures
from mt_tools.recipes import SYSTEMS, recipe_flags, recipe_text, tuned_recipes
from resmlp_core.io import write_text_atomic

BLEU_GOAL = 1.0  # ResMLP >= Transformer + 1.0 test sacreBLEU at equal GPU minutes
SPLITS = ("valid", "test")

#: fairseq-train flags of each pair's model sizes, on top of scripts/train_multi30k.sh's (which
#: are the ``small`` pair's); the dry run replaces the paper sizes with 2-layer stand-ins.
SIZES = {
    "gpu": {
        "small": {"resmlp": [], "transformer": []},
        "base": {"resmlp": ["--arch", "resmlp_mt"], "transformer": TRANSFORMER_BASE},
    },
    "dry-run": {
        "small": {"resmlp": [], "transformer": []},
        "base": {"resmlp": ["--arch", "resmlp_mt", *TINY_RESMLP], "transformer": TINY_TRANSFORMER},
    },
}
PAIR_NAMES = {
    "small": "the CPU race's models (resmlp_mt_small vs Transformer 3+3, d 256)",
    "base": "ResMLP-6 vs Transformer-base (6+6, d 512)",
}

PROFILES: Dict[str, Dict[str, Any]] = {
    "gpu": {
        "deadline_s": 480.0,
        "reserve_s": 10.0,
        "minutes": 1.0,
        "max_tokens": 8192,
        "log_interval": 20,
        "warmup": None,
        "precision": ["--fp16", "--fp16-init-scale", "128"],
        "slice": None,
        "vocab_size": 8000,
        "prep_workers": 8,
        # seconds a training takes beyond its minutes (start-up, the final validation and checkpoint)
        "train_overhead_s": 35.0,
        "prep_s": 150.0,
        "score_s": 60.0,
        "score_parallel": 8,
        "gen_batch": 128,
        "gen_extra": ["--fp16"],
        "threads": None,
        "lanes": 1,
        # the race is for equal minutes: no update budget
        "max_update": None,
        "min_updates": 100,
    },
    "dry-run": {
        "deadline_s": 110.0,
        "reserve_s": 3.0,
        # a cap only: the rehearsal stops at its update budget first (max_update)
        "minutes": 0.5,
        "max_tokens": 512,
        "log_interval": 1,
        "warmup": 10,
        "precision": ["--cpu"],
        "slice": {"train": 1000, "val": 24, "test_2016_flickr": 24},
        "vocab_size": 600,
        "prep_workers": 1,
        "train_overhead_s": 20.0,
        "prep_s": 40.0,
        "score_s": 35.0,
        "score_parallel": 2,
        "gen_batch": 128,
        "gen_extra": ["--max-len-a", "0", "--max-len-b", "16"],
        "threads": 1,
        "lanes": 2,
        # the rehearsal shows that training runs and its loss falls: an update budget, not seconds,
        # so that a busy machine does the same work (seconds of it made a single update beside a
        # test session, and a loss cannot fall over one update); about 5 s each when idle
        "max_update": 6,
        "min_updates": 6,
    },
}


def scale_profile(prof: Dict[str, Any], factor: float) -> None:
    """Stretch a profile's time budgets (deadline, start-up overheads, preparation, scoring) by
    ``factor`` >= 1, in place; the training minutes stay: the work is the same, the machine slower."""
    factor = max(1.0, factor)
    for key in ("deadline_s", "train_overhead_s", "prep_s", "score_s"):
        prof[key] *= factor


def train_flags(prof: Dict[str, Any], sizes: List[str], recipe_args: List[str]) -> List[str]:
    """fairseq-train flags after scripts/train_multi30k.sh's own (the later flag wins): the
    recipe, the model size, the GPU batch and precision, and no checkpoint or validation until the
    time is up (fairseq then saves and validates once). A profile's ``warmup`` (the dry run's
    few updates) replaces the recipe's; its ``max_update`` (the dry run's update budget) stops
    training before the minutes, which are then a cap."""
    warmup = ["--warmup-updates", str(prof["warmup"])] if prof.get("warmup") else []
    budget = ["--max-update", str(prof["max_update"])] if prof.get("max_update") else []
    return [
        *recipe_args,
        *warmup,
        *budget,
        *sizes,
        "--max-tokens",
        str(prof["max_tokens"]),
        "--log-interval",
        str(prof["log_interval"]),
        "--save-interval-updates",
        "0",
        "--save-interval",
        "1000000",
        "--validate-interval",
        "1000000",
        "--no-save-optimizer-state",
        *prof["precision"],
    ]


def pair_ratios(systems: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """ResMLP / Transformer of one pair: words/s (medians), updates, parameters, and the
    differences of valid and test sacreBLEU (ResMLP minus Transformer)."""
    r, t = systems.get("resmlp", {}), systems.get("transformer", {})

    def ratio(key: str) -> Optional[float]:
        a, b = r.get("train", {}).get(key), t.get("train", {}).get(key)
        return a / b if finite(a) and finite(b) and b else None

    out: Dict[str, Any] = {"wps": ratio("wps"), "updates": ratio("updates"), "parameters": ratio("parameters")}
    for split in SPLITS:
        a, b = r.get(split, {}).get("sacrebleu"), t.get(split, {}).get("sacrebleu")
        out[f"{split}_bleu_diff"] = round(a - b, 2) if finite(a) and finite(b) else None
    return out


# ----------------------------------------------------------------------------------------------
# The race
# ----------------------------------------------------------------------------------------------


class GpuRace:
    def __init__(self, args: argparse.Namespace) -> None:
        start_clock()  # the deadline counts from the run's start
        self.args = args
        self.mode = "dry-run" if args.dry_run else "gpu"
        self.prof = copy.deepcopy(PROFILES[self.mode])
        for key in ("minutes", "max_tokens"):
            if getattr(args, key, None):
                self.prof[key] = getattr(args, key)
        # the dry run's budgets are sized for the idle bench machine; the GPU run's never stretch
        self.slowdown = measure_slowdown() if self.mode == "dry-run" else None
        self.factor = self.slowdown["factor"] if self.slowdown else 1.0
        scale_profile(self.prof, self.factor)
        if args.deadline_s:
            self.prof["deadline_s"] = args.deadline_s
        self.workdir = Path(
            args.workdir or REPO / "runs" / ("gpu_race_dryrun" if self.mode == "dry-run" else "gpu_race")
        ).resolve()
        default_out = self.workdir / "gpu_race" if self.mode == "dry-run" else REPO / "results" / "gpu_race"
        out = Path(args.out).resolve() if args.out else default_out
        self.out = out.with_suffix("") if out.suffix in (".json", ".md") else out
        self.data_root = find_data_root(args.data_root)
        self.pairs = list(args.pairs or ("small", "base"))
        self.recipes, self.recipe_source = tuned_recipes(REPO / "results" / "mt_sweep.json")
        self.checks = Checks()
        self.declare_checks()
        self.stages: Dict[str, Dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.report: Dict[str, Any] = {
            "study": "gpu_race",
            "mode": self.mode,
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "-m", "benchmarks.gpu_race", *sys.argv[1:]]),
            "machine": {},
            "slowdown": self.slowdown,
            "budget_factor": self.factor,
            "settings": {
                "profile": self.prof,
                "pairs": self.pairs,
                "recipes": self.recipes,
                "recipe_source": self.recipe_source,
                "recipe_text": {s: recipe_text(s, self.recipes[s]) for s in SYSTEMS},
                "sizes": SIZES[self.mode],
            },
            "data": {},
            "pairs": {p: {"description": PAIR_NAMES[p], "systems": {}, "ratios": {}} for p in self.pairs},
        }

    # -- checks and time -----------------------------------------------------------------------

    def declare_checks(self) -> None:
        c, p = self.checks, self.prof
        c.declare(
            "data.ready", "data", "data", "binarized Multi30k En-De: train, valid, test, joined dictionary, references"
        )
        for pair in self.pairs:
            for s in SYSTEMS:
                st = f"train.{pair}.{s}"
                c.declare(
                    f"{pair}.{s}.train.exit_ok", pair, st, "fairseq-train exit status 0 and checkpoint_last.pt written"
                )
                c.declare(f"{pair}.{s}.train.updates", pair, st, f">= {p['min_updates']} updates")
                c.declare(
                    f"{pair}.{s}.train.loss_falls",
                    pair,
                    st,
                    "mean training loss of the last quarter of log intervals < the first's",
                )
                c.declare(
                    f"{pair}.{s}.train.no_nan", pair, st, "0 non-finite losses / grad norms, no FloatingPointError"
                )
                c.declare(
                    f"{pair}.{s}.train.fp16_overflow",
                    pair,
                    st,
                    "fp16 overflow (skipped) updates after the loss scale's calibration <= 1% of updates",
                )
                c.declare(
                    f"{pair}.{s}.scored", pair, "score", "one hypothesis per reference on valid and test (beam 4)"
                )
            c.declare(
                f"{pair}.goal.test_bleu",
                pair,
                "score",
                f"ResMLP test sacreBLEU >= Transformer's + {BLEU_GOAL}",
                kind="goal",
            )

    def remaining(self) -> float:
        return self.prof["deadline_s"] - self.prof["reserve_s"] - elapsed()

    def run_time(self) -> float:
        """Seconds one training takes, its minutes and its overhead."""
        return self.prof["minutes"] * 60 + self.prof["train_overhead_s"]

    def stage(self, name: str, fn, *args) -> None:
        entry: Dict[str, Any] = {"started_at_s": round(elapsed(), 1)}
        with self.lock:
            self.stages[name] = entry
        start = time.monotonic()
        try:
            fn(*args)
            entry["status"] = "ok"
        except Exception as err:  # a failed stage is reported, the next ones still run
            entry.update(
                status="failed", error=f"{type(err).__name__}: {err}"[:2000], traceback=traceback.format_exc()[-3000:]
            )
            log(f"stage {name}: FAILED: {entry['error'][:500]}")
        entry["seconds"] = round(time.monotonic() - start, 1)
        log(f"stage {name}: {entry['status']} in {entry['seconds']:.1f}s")

    # -- run -----------------------------------------------------------------------------------

    def run(self) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log(
            f"GPU race ({self.mode}), deadline {self.prof['deadline_s']:.0f}s, pairs {', '.join(self.pairs)}, "
            f"{self.prof['minutes']:.2f} min per training, {self.prof['max_tokens']} tokens per batch"
        )
        if self.slowdown:
            sd = self.slowdown
            log(
                f"budgets x{self.factor:.2f}: this machine takes {sd['workload_ratio']:.2f}x the idle "
                "bench machine's time on a "
                f"fixed workload, load average {sd['load_average_1min']:.1f} on {sd['cores']} cores"
            )
        self.report["machine"] = machine_info(self.mode)
        log(
            f"recipes ({self.recipe_source}): "
            + "; ".join(f"{s}: {recipe_text(s, r)}" for s, r in self.recipes.items())
        )
        self.stage("data", self.prepare_data)
        if self.stages["data"]["status"] == "ok":
            lanes = [self.pairs[i :: self.prof["lanes"]] for i in range(self.prof["lanes"])]
            threads = [threading.Thread(target=self.train_pairs, args=(lane,)) for lane in lanes if lane]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.stage("score", self.score)
        return self.finish()

    def train_pairs(self, pairs: List[str]) -> None:
        for pair in pairs:
            # both trainings of the pair and the scoring must still fit (lanes side by side share
            # the time); a lane's first pair always runs, a later one only if the budget allows
            need = 2 * self.run_time() + self.prof["score_s"]
            if pair != pairs[0] and self.remaining() < need:
                self.skip_pair(pair, f"skipped: out of time ({self.remaining():.0f}s left, the pair needs {need:.0f}s)")
                continue
            for system in SYSTEMS:
                self.stage(f"train.{pair}.{system}", self.train, pair, system)
            self.report["pairs"][pair]["status"] = "trained"

    def skip_pair(self, pair: str, reason: str) -> None:
        """A pair left out for the deadline: its checks are "n/a" (raced if the budget allows), not failures."""
        self.report["pairs"][pair]["status"] = reason
        with self.lock:
            for s in SYSTEMS:
                self.stages[f"train.{pair}.{s}"] = {
                    "status": reason,
                    "seconds": 0.0,
                    "started_at_s": round(elapsed(), 1),
                }
            for name in [n for n in self.checks.items if n.startswith(f"{pair}.")]:
                self.checks.set(name, None, None, note=reason)
        log(f"pair {pair}: {reason}")

    def data_dir(self) -> Path:
        if self.mode == "dry-run":
            return self.workdir / "data-bin" / "multi30k.en-de"
        return Path(self.args.data).resolve() if self.args.data else REPO / "data-bin" / "multi30k.en-de"

    def prepare_data(self) -> None:
        data, info = self.data_dir(), self.report["data"]
        info["path"] = str(data)
        if self.mode == "gpu" and data_ready(data):
            info["status"] = "present (carried)"
        else:
            raw = self.data_root / "multi30k" if self.data_root else None
            if raw is None or not (raw / "train.en").is_file():
                self.checks.set("data.ready", None, False, note="no raw Multi30k")
                raise RuntimeError(f"{data} is absent and no raw Multi30k was found (set RESMLP_DATA or --data-root)")
            if self.prof["slice"]:
                raw = slice_raw(raw, self.workdir / "raw-slice", self.prof["slice"])
            cmd = prepare_command(
                raw, data, self.prof["vocab_size"], min(self.prof["prep_workers"], os.cpu_count() or 1)
            )
            log(f"preparing {data}: {' '.join(cmd[1:])}")
            proc = run_logged(
                cmd,
                self.workdir / "logs" / "prepare.log",
                min(self.prof["prep_s"], self.remaining()),
                env=base_env(self.mode),
                what="prepare_multi30k",
            )
            info.update(status="prepared" if proc["returncode"] == 0 else "failed", process=proc, command=cmd)
            if proc["returncode"] != 0:
                info["log_tail"] = tail(Path(proc["log"]))
        ok = data_ready(data)
        if ok:
            prep = json.loads((data / "prep.json").read_text())
            info["sentences"] = {k: v.get("kept") for k, v in prep.get("splits", {}).items()}
            info["vocab_size"] = prep.get("vocab_size")
        self.checks.set("data.ready", info["status"], ok)
        if not ok:
            raise RuntimeError(f"translation data not ready ({info['status']})")

    def fairseq_train_wrapper(self) -> Path:
        """scripts/train_multi30k.sh runs ``$FAIRSEQ_TRAIN``: this interpreter's fairseq-train,
        also where fairseq was installed without console scripts (wheels carried to the GPU)."""
        path = self.workdir / "bin" / "fairseq-train"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fairseq_cli.train "$@"\n')
        path.chmod(0o755)
        return path

    def train(self, pair: str, system: str) -> None:
        prof = self.prof
        save_dir = self.workdir / "mt" / pair / system
        for old in save_dir.glob("checkpoint*.pt"):
            old.unlink()  # a budget of wall-clock time from scratch
        save_dir.mkdir(parents=True, exist_ok=True)
        flags, recipe_env = recipe_flags(system, self.recipes[system])
        extra = train_flags(prof, SIZES[self.mode][pair][system], flags)
        cmd = [str(REPO / "scripts" / "train_multi30k.sh"), "en-de", *extra]
        env = dict(
            base_env(self.mode),
            MODEL=system,
            MINUTES=f"{prof['minutes']:g}",
            DATA=str(self.data_dir()),
            SAVE_DIR=str(save_dir),
            LOG_FORMAT="json",
            SEED="1",
            FAIRSEQ_TRAIN=str(self.fairseq_train_wrapper()),
            **recipe_env,
        )
        log(f"train {pair}/{system} for {prof['minutes']:g} min: {' '.join(cmd[1:])}")
        timeout = min(self.run_time() * 1.5, max(self.remaining(), 1.0))
        proc = run_logged(
            cmd, self.workdir / "logs" / f"train_{pair}_{system}.log", timeout, env=env, what=f"train {pair}/{system}"
        )
        text = Path(proc["log"]).read_text(errors="replace")
        fig = fairseq_figures(text)
        checkpoint = save_dir / "checkpoint_last.pt"
        fig.update(
            process=proc,
            command=cmd,
            env={k: env[k] for k in ("MODEL", "MINUTES", "SEED", *recipe_env)},
            checkpoint=str(checkpoint) if checkpoint.exists() else None,
        )
        with self.lock:
            self.report["pairs"][pair]["systems"].setdefault(system, {})["train"] = fig
        ok = proc["returncode"] == 0 and checkpoint.exists()
        if not ok:
            fig["log_tail"] = tail(Path(proc["log"]))
        name = f"{pair}.{system}.train"
        self.checks.set(f"{name}.exit_ok", proc["returncode"], ok, note="timed out" if proc["timed_out"] else "")
        self.checks.set(f"{name}.updates", fig["updates"], fig["updates"] >= prof["min_updates"])
        first, last = fig["first_loss"], fig["last_loss"]
        self.checks.set(
            f"{name}.loss_falls",
            last,
            finite(first) and finite(last) and last < first,
            threshold=f"< first quarter's mean ({fmt(first)})",
        )
        self.checks.set(
            f"{name}.no_nan",
            fig["nonfinite"] + fig["fatal_errors"],
            fig["nonfinite"] == 0 and fig["fatal_errors"] == 0 and fig["updates"] > 0,
        )
        if "--fp16" in prof["precision"]:
            limit = max(1, 0.01 * fig["updates"])
            later = fig["overflows"] - fig["calibration_overflows"]
            self.checks.set(
                f"{name}.fp16_overflow",
                later,
                later <= limit,
                threshold=f"<= 1% of updates ({limit:.0f})",
                note=f"{fig['calibration_overflows']} while the loss scale calibrated; final loss scale "
                f"{fmt(fig['loss_scale'])}",
            )
        else:
            self.checks.set(f"{name}.fp16_overflow", fig["overflows"], None, note="not applicable on CPU (fp32)")
        spread = fig["wps_spread"]
        log(
            f"{pair}/{system}: {fig['updates']} updates, words/s median {fmt(fig['wps'])} (quartiles "
            f"{fmt(spread['q1'])}-"
            f"{fmt(spread['q3'])}, {spread['n']} intervals), loss {fmt(first)} -> {fmt(last)}, valid loss "
            f"{fmt(fig['valid_loss'])}"
        )
        if not ok:
            raise RuntimeError(
                f"fairseq-train exit {proc['returncode']} (timed out: {proc['timed_out']}): "
                f"{tail(Path(proc['log']), 1500)}"
            )

    def score(self) -> None:
        """Every checkpoint on valid and test at once, in one child process (``--score-worker``)
        that the deadline can stop with its fairseq-generate children."""
        jobs = [
            {"pair": p, "system": s, "split": split, "checkpoint": sysd["train"]["checkpoint"]}
            for p, pd in self.report["pairs"].items()
            for s, sysd in pd["systems"].items()
            if sysd.get("train", {}).get("checkpoint")
            for split in SPLITS
        ]
        if not jobs:
            raise RuntimeError("no checkpoint to score")
        config = {
            "data": str(self.data_dir()),
            "jobs": jobs,
            "parallel": self.prof["score_parallel"],
            "batch_size": self.prof["gen_batch"],
            "extra": self.prof["gen_extra"],
            "threads": self.prof["threads"],
        }
        cfg, out = self.workdir / "score.config.json", self.workdir / "score.json"
        cfg.write_text(json.dumps(config))
        out.unlink(missing_ok=True)
        log(f"scoring {len(jobs)} checkpoint x split, {self.prof['score_parallel']} at a time")
        cmd = [sys.executable, "-m", "benchmarks.gpu_race", "--score-worker", str(cfg), str(out)]
        proc = run_logged(
            cmd, self.workdir / "logs" / "score.log", max(self.remaining(), 1.0), env=base_env(self.mode), what="score"
        )
        results = json.loads(out.read_text()) if out.exists() else []
        for job, res in zip(jobs, results):
            if res is not None:
                self.report["pairs"][job["pair"]]["systems"][job["system"]][job["split"]] = res
        for pair, pd in self.report["pairs"].items():
            for s, sysd in pd["systems"].items():
                got = [sysd.get(split, {}) for split in SPLITS]
                complete = all(
                    g.get("sentences") is not None and g.get("sentences") == g.get("references") for g in got
                )
                self.checks.set(
                    f"{pair}.{s}.scored",
                    [g.get("sacrebleu") for g in got],
                    complete,
                    note="; ".join(g["error"][-300:] for g in got if "error" in g),
                )
            pd["ratios"] = pair_ratios(pd["systems"])
            diff = pd["ratios"].get("test_bleu_diff")
            if diff is not None:
                self.checks.set(
                    f"{pair}.goal.test_bleu",
                    diff,
                    diff >= BLEU_GOAL if self.mode == "gpu" else None,
                    threshold=f"ResMLP - Transformer test sacreBLEU >= {BLEU_GOAL}",
                    note="" if self.mode == "gpu" else "not applicable on CPU (a few updates of training)",
                )
        if proc["returncode"] != 0 or len(results) != len(jobs) or any(r is None or "error" in r for r in results):
            raise RuntimeError(
                f"scoring: exit {proc['returncode']} (timed out: {proc['timed_out']}): {tail(Path(proc['log']), 1500)}"
            )

    def finish(self) -> int:
        self.checks.finalize(self.stages)
        failed = self.checks.failed(self.args.strict_goals)
        self.report.update(
            stages=self.stages,
            checks=list(self.checks.items.values()),
            wall_seconds=round(elapsed(), 1),
            passed=not failed,
            failed_checks=failed,
            vision_on_the_gpu=vision_findings(REPO / "results" / "gpu_acceptance.json"),
        )
        # paths inside the repo become relative to it; others are named by what they are
        names = {str(REPO): "", sys.executable: "python"}
        if sys.prefix != sys.base_prefix:  # a virtual environment (its site-packages in tracebacks)
            names[sys.prefix] = "<venv>"
        for path, name in ((self.out.parent, "<out>"), (self.workdir, "<workdir>"), (self.data_root, "$RESMLP_DATA")):
            if path is not None and not path.is_relative_to(REPO):
                names[str(path)] = name
        report = scrub_paths(json_safe(self.report), names)
        json_path, md_path = Path(f"{self.out}.json"), Path(f"{self.out}.md")
        write_result(json_path, json.dumps(report, indent=1, default=str, allow_nan=False) + "\n")
        md = markdown(report)
        write_result(md_path, md)
        print()
        print(md)
        log(f"wrote {json_path} and {md_path}")
        n = {
            s: sum(1 for i in self.checks.items.values() if i["status"] == s)
            for s in ("pass", "fail", "skipped", "n/a")
        }
        log(
            f"{'PASSED' if not failed else 'FAILED'}: {n['pass']} pass, {n['fail']} fail, {n['skipped']} "
            f"skipped, {n['n/a']} n/a"
            + (f"; failing: {', '.join(failed)}" if failed else "")
            + f"; wall clock {elapsed():.0f}s"
        )
        return 0 if not failed else 1


def score_worker(config_path: Path, out: Path) -> int:
    """Score every job of the config (``{pair, system, split, checkpoint}``) with
    mt_tools.evaluate, ``parallel`` at a time; ``out`` holds one result (or error) per job, in
    order, rewritten as each finishes so that a stopped worker still reports what it did."""
    from mt_tools.evaluate import evaluate, result_dict

    c = json.loads(Path(config_path).read_text())
    results: List[Optional[dict]] = [None] * len(c["jobs"])
    lock = threading.Lock()

    def one(i: int) -> None:
        job = c["jobs"][i]
        try:
            r = result_dict(
                evaluate(
                    Path(c["data"]),
                    Path(job["checkpoint"]),
                    split=job["split"],
                    beam=4,
                    batch_size=c["batch_size"],
                    extra_args=c["extra"],
                    num_samples=2,
                    threads=c["threads"],
                )
            )
            r["references"] = r["sentences"]  # evaluate refuses anything but one hypothesis per reference
        except Exception as err:  # the other jobs still run
            r = {"error": f"{type(err).__name__}: {err}"[-2000:]}
        with lock:
            results[i] = r
            write_text_atomic(out, json.dumps(json_safe(results)))
        print(
            f"{job['pair']}/{job['system']} {job['split']}: sacreBLEU {r.get('sacrebleu', r.get('error'))}", flush=True
        )

    with ThreadPoolExecutor(max_workers=c["parallel"]) as pool:
        list(pool.map(one, range(len(c["jobs"]))))
    return 0 if all(r is not None and "error" not in r for r in results) else 1


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def vision_findings(acceptance_json: Path) -> Dict[str, Any]:
    """What the GPU acceptance run measured of the folded S12 and torch.compile, and why; the
    open hypotheses only where it has no such figures."""
    why = (
        "In the first two H100 runs the folded S12 ran at half the unfolded one's speed (8,948 vs 18,213 img/s) and "
        "Inductor did not finish compiling it in 110-130 s. One cause for both: the folded block ran its channel MLP "
        "in row chunks (a CPU cache optimisation) on every device: dozens of small GEMMs per block, which leave a GPU "
        "idle, and as many in-place GEMMs on views for Inductor to trace and compile. The chunks are now CPU-only and "
        "eager-only (vision.resmlp.FoldedResMLPBlock.forward); the invariant is tested on the CPU "
        "(tests/test_vision_models.py: one channel-MLP GEMM pair per block on a non-CPU device and under "
        "torch.compile)."
    )
    try:
        acc = json.loads(Path(acceptance_json).read_text())
        inf = acc["vision"]["bench"]["inference"]
        comp = acc["vision"]["compile"]
    except (OSError, KeyError, json.JSONDecodeError):
        return {
            "source": None,
            "why": why,
            "open": "not measured since the change: the GPU acceptance run would tell "
            "(expected: folded >= unfolded img/s, compile well under 60 s)",
        }
    ips = inf["img_per_s"]
    variants = comp.get("variants", {})
    compile_s = {k: v.get("compile_s") for k, v in variants.items()}
    return {
        "source": "results/gpu_acceptance.json",
        "card": acc.get("machine", {}).get("gpu_name"),
        "started_utc": acc.get("started_utc"),
        "batch": inf.get("batch"),
        "img_per_s": ips,
        "folded_vs_unfolded": ips["ours_folded"] / ips["ours"],
        "folded_vs_timm": ips["ours_folded"] / ips["timm"],
        "compile_s": compile_s,
        "compiled_img_per_s": comp.get("img_per_s"),
        "compile_rel_diff_vs_eager": {k: v.get("rel_diff_vs_eager") for k, v in variants.items()},
        "goals": {
            "folded >= 1.0x unfolded": ips["ours_folded"] >= ips["ours"],
            "folded >= 1.25x timm": ips["ours_folded"] >= 1.25 * ips["timm"],
            "compiled in < 60 s": bool(compile_s) and all(finite(s) and s < 60 for s in compile_s.values()),
        },
        "why": why,
        "open": None,
    }


def markdown(r: Dict[str, Any]) -> str:
    m, prof = r["machine"], r["settings"]["profile"]
    gpu = m.get("gpu_name")
    precision = "fp16 (fairseq --fp16, loss scale from 128)" if "--fp16" in prof["precision"] else "fp32 (CPU)"
    lines = [
        f"# Translation race on one GPU ({r['mode']}): {'PASSED' if r['passed'] else 'FAILED'}",
        "",
        f"Card: {gpu or 'none (CPU)'}"
        + (f", driver {m.get('driver')}, {m.get('gpu_memory')}" if gpu else "")
        + f"; torch {m.get('torch')} (CUDA {m.get('cuda')}), fairseq {m.get('fairseq')}, Python {m.get('python')}; "
        f"{m.get('cpu_count')} CPU cores ({m.get('cpu', '?')}).",
        f"Started {r['started_utc']}; wall clock {r['wall_seconds']:.0f}s of a {prof['deadline_s']:.0f}s deadline"
        + (f" (budgets x{r['budget_factor']:.2f}: measured slowdown of this machine)" if r.get("slowdown") else "")
        + f". Command: `{r['command']}`",
        "",
        f"Multi30k En-De, each system trained alone for {prof['minutes']:g} min of wall-clock time "
        "(fairseq --stop-time-hours)"
        + (f" or {prof['max_update']} updates, whichever comes first" if prof.get("max_update") else "")
        + ", "
        f"{prof['max_tokens']} tokens per batch and {precision} for both; recipes ({r['settings']['recipe_source']}): "
        + "; ".join(f"{s}: {t}" for s, t in r["settings"]["recipe_text"].items())
        + ". Words/s: fairseq's wps per log interval, median over the run without the first interval (start-up), "
        "[quartiles; min-max; intervals]. sacreBLEU of the last checkpoint, beam 4.",
        "",
    ]
    for pair, pd in r["pairs"].items():
        lines += [f"## {pair}: {pd['description']}", ""]
        if pd.get("status", "").startswith("skipped"):
            lines += [pd["status"], ""]
            continue
        lines += [
            "| system | parameters | updates | words/s median [quartiles; min-max; n] | final lr | valid loss "
            "| valid sacreBLEU | test sacreBLEU |",
            "|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for s in SYSTEMS:
            d = pd["systems"].get(s, {})
            t = d.get("train", {})
            sp = t.get("wps_spread") or {}
            lines.append(
                f"| {s} | {fmt(t.get('parameters'))} | {fmt(t.get('updates'))} | {fmt(t.get('wps'))} "
                f"[{fmt(sp.get('q1'))}-{fmt(sp.get('q3'))}; {fmt(sp.get('min'))}-{fmt(sp.get('max'))}; "
                f"{sp.get('n', 0)}] "
                f"| {fmt(t.get('final_lr'))} | {fmt(t.get('valid_loss'))} | {fmt(d.get('valid', {}).get('sacrebleu'))} "
                f"| {fmt(d.get('test', {}).get('sacrebleu'))} |"
            )
        ra = pd.get("ratios") or {}

        def x(v: Any) -> str:
            return f"{v:.2f}x" if finite(v) else "-"

        lines += [
            "",
            f"ResMLP / Transformer: words/s {x(ra.get('wps'))}, updates {x(ra.get('updates'))}, parameters "
            f"{x(ra.get('parameters'))}; sacreBLEU ResMLP - Transformer: valid {fmt(ra.get('valid_bleu_diff'))}, "
            f"test {fmt(ra.get('test_bleu_diff'))} (goal >= +{BLEU_GOAL})",
            "",
        ]
    lines += ["## Checks", "", "| section | item | value | threshold | status |", "|---|---|---:|---|---|"]
    for c in r["checks"]:
        status = c["status"] + (" (goal)" if c["kind"] == "goal" else "")
        note = f" — {c['note'][:300]}" if c.get("note") else ""
        lines.append(
            "| "
            + " | ".join(
                str(v).replace("|", "/").replace("\n", " ")
                for v in (c["section"], c["name"], fmt(c["value"]), c["threshold"], status + note)
            )
            + " |"
        )
    lines += [
        "",
        "Stages: "
        + "; ".join(f"{n} {s['status']} ({s.get('seconds', 0):.0f}s)" for n, s in r.get("stages", {}).items()),
        "",
    ]
    v = r.get("vision_on_the_gpu") or {}
    lines += ["## Vision on the GPU: the folded S12 and torch.compile", ""]
    if v.get("source"):
        ips = v["img_per_s"]
        lines += [
            f"Measured by the GPU acceptance run ({v['source']}, {v.get('card')}, {v.get('started_utc')}), "
            "not by this race: "
            f"inference at batch {v.get('batch')}, bf16, img/s folded {fmt(ips['ours_folded'])}, unfolded "
            f"{fmt(ips['ours'])}, "
            f"timm {fmt(ips['timm'])} (folded {v['folded_vs_unfolded']:.2f}x unfolded, "
            f"{v['folded_vs_timm']:.2f}x timm); "
            f"torch.compile (Inductor, cold cache) in "
            + ", ".join(f"{k} {fmt(s)} s" for k, s in v["compile_s"].items())
            + ", max relative difference to eager "
            + ", ".join(f"{k} {fmt(d)}" for k, d in v["compile_rel_diff_vs_eager"].items())
            + ". Goals: "
            + ", ".join(f"{k}: {'met' if ok else 'missed'}" for k, ok in v["goals"].items())
            + ".",
            "",
        ]
    lines += [v.get("why", ""), ""]
    if v.get("open"):
        lines += [f"Open: {v['open']}.", ""]
    lines += ["Goals are reported but only count in the exit status with --strict-goals.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_race", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU at tiny sizes (under 2 minutes)")
    p.add_argument(
        "--pairs", nargs="+", choices=("small", "base"), help="pairs to race, in this order (default: small base)"
    )
    p.add_argument(
        "--minutes",
        type=float,
        help="training minutes per system (default: 1.0; with --dry-run 0.5, a cap behind its budget of 6 updates)",
    )
    p.add_argument(
        "--max-tokens", type=int, help="tokens per batch, the same for both systems (default: 8192; 512 with --dry-run)"
    )
    p.add_argument(
        "--deadline-s",
        type=float,
        help="global deadline in seconds (default: 480; 110 with --dry-run, stretched "
        "by the machine's measured slowdown)",
    )
    p.add_argument(
        "--out",
        help="results path without extension (default: results/gpu_race; with --dry-run "
        "<workdir>/gpu_race: a dry run never writes results/)",
    )
    p.add_argument(
        "--workdir", help="data, checkpoints, logs (default: runs/gpu_race, runs/gpu_race_dryrun with --dry-run)"
    )
    p.add_argument("--data", help="binarized Multi30k En-De (default: data-bin/multi30k.en-de; prepared if absent)")
    p.add_argument("--data-root", help="folder holding the raw multi30k/ (default: $RESMLP_DATA, else ../shared/data)")
    p.add_argument("--strict-goals", action="store_true", help="count the goals in the exit status")
    p.add_argument("--score-worker", nargs=2, type=Path, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.score_worker:
        return score_worker(*args.score_worker)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA GPU is visible: run on the GPU machine, or use --dry-run for the CPU rehearsal")
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        if args.out and Path(args.out).resolve().parent == (REPO / "results").resolve():
            p.error("--dry-run writes no results/ file: its figures mean nothing (use another --out)")
    return GpuRace(args).run()


if __name__ == "__main__":
    sys.exit(main())
