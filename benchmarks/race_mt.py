#!/usr/bin/env python
"""An honest translation race: ResMLP (resmlp_mt_small) against a tuned fairseq
Transformer of the same depth, width, MLP size and heads, on Multi30k, in four stages.

    .venv/bin/python -m benchmarks.race_mt --stage all          # everything: about 9 hours on 2 cores
    make bench-mt MINUTES=25                                 # the same
    .venv/bin/python -m benchmarks.race_mt --stage sweep        # then race, curves, report

1. ``sweep``: the same small sweep for both systems, lr {5e-4, 1e-3, 2e-3} x warm-up
   {300, 1000}, plus pre- vs post-norm for the Transformer (``TRANSFORMER_NORM``) and the
   LayerScale init {0.2, 0.5} for ResMLP: 12 configurations each, ``--sweep-updates`` updates
   on En-De, scored by sacreBLEU of the last checkpoint on the valid split (beam 4).
   Writes results/mt_sweep.{json,md}.
2. ``race``: each system's best sweep recipe (or the recipe of scripts/train_multi30k.sh when no
   sweep was run, which the output says) trained for ``--minutes`` of wall-clock time (fairseq
   ``--stop-time-hours``), ``--seeds`` seeds, En-De and En-Fr; test and valid sacreBLEU of the
   last checkpoint per seed, mean and standard deviation. Writes results/mt_race.{json,md}.
3. ``curves``: En-De until the validation BLEU has not improved for 3 evaluations, or
   ``--max-minutes`` of training; En-Fr for ``--fr-minutes`` (no early stopping). A run that
   early-stopped (a plateau) then has its last 5 checkpoints averaged; a run stopped by its
   minutes budget is still rising and is reported by its last checkpoint (averaging would mix
   in early, weaker models). Best, last (and averaged) models are scored on test and valid.
   Writes results/mt_curves.{json,md,png} and one PNG per pair.
4. ``report``: rebuilds every table and results/mt_report.{md,json} from the JSON files, with
   each goal of the race stated as met or missed with its figures.

Fair conditions: every run trains with scripts/train_multi30k.sh (same data, vocabulary, shared
embeddings, 2048 tokens per update, Adam, inverse-sqrt schedule, label smoothing, dropout), one
thread each, ``--parallel`` (2) runs at a time; ResMLP and Transformer runs of the same
configuration slot (same seed, same pair) start together and the next pair waits for both.
All scores are sacreBLEU on detokenized output against the original references
(mt_tools.evaluate, fairseq-generate with beam 4).

Validation curves: training runs in segments of ``--eval-every`` updates (fairseq-train with
``--max-update``, resumed from ``checkpoint_last.pt``: optimizer, schedule, data order and
per-update seeds continue as in one run); after each segment the checkpoint is scored by
mt_tools.evaluate on the valid split, by the same scorer as every other figure, while that
system's training waits, so each system keeps to its own core and the other system's
conditions do not change. Training stops when the validation BLEU has not improved for 3
evaluations (En-De) or when its training minutes reach the budget. Minutes are training time
from the fairseq log timestamps, fairseq's validation, checkpoint writing and the restarts
left out. Chosen over fairseq's ``--eval-bleu`` + ``--patience``: in fairseq 0.12 that
validation crashes (``KeyError: 'bleu'``) when every hypothesis is empty, as early in a run
can happen, it scores against references decoded from the binarized data rather than the
original text, and it stores numpy arrays in the checkpoints, which the plugin's weights-only
loading refuses. Chosen over scoring checkpoints in separate processes while training goes on:
those would take CPU from the two trainings that already fill the two cores. A curve run also
resumes after an interruption from its last evaluated segment (``progress.json``), and a run
stopped by its budget or its patience goes on when the stage is run again with a larger
``--max-minutes`` or early-stopping patience (:func:`run_grew`; nothing else may differ); a
smaller one is refused, naming the run's folder, rather than training the run again and deleting
it.

Resumable: every finished run caches its figures in ``<work-dir>/<stage>/<run>/result.json``
together with the settings that produced it; a re-run skips runs whose settings match. An
unfinished sweep run (an update budget) resumes from its ``checkpoint_last.pt``; an unfinished race
run restarts from scratch (a wall-clock budget cannot be resumed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
from benchmarks.common import cli_path, git_state, parse_fairseq_log, training_minutes, write_result  # noqa: E402
from benchmarks.fairseq_runs import machine_info, training_figures  # noqa: E402
from mt_tools.evaluate import average_checkpoints, evaluate, result_dict  # noqa: E402
from mt_tools.recipes import DEFAULT_RECIPES, fmt_lr, recipe_flags, recipe_name, recipe_text, tuned_recipes  # noqa: E402,F401
from resmlp_core.io import copy_atomic, remove_stale_temporaries, write_text_atomic  # noqa: E402

log = logging.getLogger("race_mt")

STAGES = ("sweep", "race", "curves", "report")
SYSTEMS = ("resmlp", "transformer")
PAIRS = ("en-de", "en-fr")
SPLITS = ("test", "valid")
SWEEP_LRS = (5e-4, 1e-3, 2e-3)
SWEEP_WARMUPS = (300, 1000)
SWEEP_LAYERSCALE = (0.2, 0.5)
SWEEP_NORMS = ("pre", "post")
GOAL_RACE = "At 25 minutes: ResMLP >= tuned Transformer + 1.0 sacreBLEU, mean of 3 seeds, on test and valid, both pairs"
GOAL_CONVERGENCE = "At convergence (En-De): ResMLP >= tuned Transformer - 0.5 sacreBLEU"
PATIENCE = 3
AVERAGE_LAST = 5
#: a curve run's fairseq-train flags: one save (and fairseq validation loss) at the end of each
#: segment (``--max-update``), none at epoch ends
SEGMENT_ARGS = ["--save-interval-updates", "0", "--save-interval", "1000000", "--validate-interval", "1000000"]


# --- small helpers ------------------------------------------------------------------------------


def sweep_grid(quick: bool, lrs=SWEEP_LRS, warmups=SWEEP_WARMUPS) -> Dict[str, List[dict]]:
    """The sweep's configurations per system, the same learning rates and warm-ups for both."""
    grid = {
        "resmlp": [{"lr": lr, "warmup": w, "layerscale_init": ls}
                   for lr, w, ls in itertools.product(lrs, warmups, SWEEP_LAYERSCALE)],
        "transformer": [{"lr": lr, "warmup": w, "norm": n}
                        for lr, w, n in itertools.product(lrs, warmups, SWEEP_NORMS)],
    }
    if quick:  # two configurations per system that differ in every swept setting
        grid = {s: [g[0], g[-1]] for s, g in grid.items()}
    return grid


def write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def minutes_text(m: float) -> str:
    if m >= 90:
        return f"{m / 60:.1f} h"
    return f"{m:.1f} min"


def mean_std(values: List[float]) -> dict:
    values = [float(v) for v in values]
    return {"values": values, "n": len(values), "mean": round(statistics.fmean(values), 3) if values else None,
            "std": round(statistics.stdev(values), 3) if len(values) > 1 else None}


def pm(stats: dict) -> str:
    if stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if stats.get("std") is not None else f"{stats['mean']:.2f}"


def run_info(args) -> dict:
    info = machine_info()
    try:
        import sacrebleu

        info["sacrebleu"] = sacrebleu.__version__
    except ImportError:  # pragma: no cover
        pass
    info.update(git_state())
    info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    info["threads_per_run"] = args.threads
    info["runs_at_a_time"] = args.parallel
    info["hostname"] = platform.node()
    info["date"] = datetime.now().isoformat(timespec="seconds")
    return info


# --- following a fairseq-train log live ---------------------------------------------------------

class LogTracker:
    """Reads fairseq-train's log (``--log-format json``) line by line: updates done, the
    validation points, and the training time with validation and checkpoint writing left out."""

    def __init__(self):
        self.start: Optional[float] = None
        self.now: Optional[float] = None
        self.updates = 0
        self.points: List[dict] = []
        self.paused = 0.0  # seconds spent in finished validation + checkpoint-writing intervals
        self._pause: Optional[List[float]] = None
        self._pending: dict = {}
        self.stop_reason: Optional[str] = None

    def _close_pause(self):
        if self._pause is not None:
            self.paused += self._pause[1] - self._pause[0]
            self._pause = None

    def train_minutes(self, at: Optional[float] = None) -> float:
        if self.start is None:
            return 0.0
        at = self.now if at is None else at
        pause = (at - self._pause[0]) if self._pause is not None else 0.0
        return max(0.0, (at - self.start - self.paused - pause) / 60)

    def wall_minutes(self) -> float:
        return 0.0 if self.start is None else (self.now - self.start) / 60

    def feed(self, line: str) -> Optional[str]:
        """Update the state; return ``"train"``, ``"valid"`` or ``"saved"`` for those records."""
        parsed = next(parse_fairseq_log([line]), None)
        if parsed is None:
            return None
        t, source, msg = parsed.time, parsed.logger, parsed.message
        self.now = t
        if msg.startswith("begin training epoch"):
            if self.start is None:
                self.start = t
            self._close_pause()
        elif msg.startswith("begin validation on"):
            self._close_pause()
            self._pending = {"train_minutes": round((t - self.start - self.paused) / 60, 3) if self.start else 0.0,
                             "wall_minutes": round((t - self.start) / 60, 3) if self.start else 0.0}
            self._pause = [t, t]
        elif source == "valid" and msg.startswith("{"):
            rec = json.loads(msg)
            point = dict(self._pending, updates=int(rec["valid_num_updates"]), valid_loss=float(rec["valid_loss"]))
            if "valid_bleu" in rec:
                point["valid_bleu"] = float(rec["valid_bleu"])
            self.points.append(point)
            self.updates = max(self.updates, point["updates"])
            if self._pause is not None:
                self._pause[1] = t
            return "valid"
        elif msg.startswith(("Saved checkpoint", "Finished saving")):
            if self._pause is not None:
                self._pause[1] = t
            return "saved" if msg.startswith("Saved checkpoint") else None
        elif source == "train_inner" and msg.startswith("{"):
            self._close_pause()
            self.updates = max(self.updates, int(json.loads(msg).get("num_updates", 0)))
            return "train"
        elif "early stop since valid performance" in msg:
            self.stop_reason = f"early stop: validation BLEU did not improve for {PATIENCE} evaluations"
        elif msg.startswith("Stopping training due to"):
            self.stop_reason = msg.replace("Stopping training due to ", "fairseq stop: ")
        return None


# --- running jobs ---------------------------------------------------------------------------------


#: what fairseq-train's log says when it stops because the training diverged: the gradients of an
#: update are not finite (fp32; ``crash.pt`` is then saved), or fp16's loss scale fell to its floor
DIVERGED_MARKS = ("FloatingPointError: gradients are Nan/Inf", "Minimum loss scale reached")


class TrainingDiverged(RuntimeError):
    """fairseq-train stopped because the training diverged (:data:`DIVERGED_MARKS`).
    ``updates``: the last update its log reported (the log interval's; the divergence came at
    that update or later); ``log``: the log file."""

    def __init__(self, message: str, updates: int, log: Path):
        super().__init__(message)
        self.updates, self.log = updates, log


@dataclass
class Job:
    stage: str
    name: str
    system: str
    pair: str
    seed: int
    recipe: dict
    label: str = ""
    minutes: float = 24 * 60.0  # fairseq --stop-time-hours (wall-clock, counts validation)
    max_update: Optional[int] = None
    cap_minutes: Optional[float] = None  # curves: training-minutes budget
    segment_updates: Optional[int] = None  # curves: updates between evaluations
    early_stop: bool = False  # curves: stop after `patience` evaluations without improvement
    patience: int = PATIENCE  # curves: evaluations without improvement that stop a run
    train_args: List[str] = field(default_factory=list)
    estimate_minutes: float = 1.0  # a priori duration, for the ETA before any run has finished
    data: Optional[str] = None  # a prepared folder other than the pair's (the spec records the one used)

    @property
    def key(self) -> str:
        """``stage/name``: the run's folder under the work directory, and its id on a results page."""
        return f"{self.stage}/{self.name}"


#: the trainings under way (fairseq-train processes), stopped with this process: see stop_trainings_on_sigterm
_TRAININGS: set = set()
_TRAININGS_LOCK = threading.RLock()  # re-entrant: the handler may interrupt its own thread holding it
_STOPPING = threading.Event()  # set by the SIGTERM handler: no training starts any more


def start_training(cmd: List[str], **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen(cmd)``, registered as a training under way until :func:`end_training`;
    refused once this process is stopping (a run between two segments must not start another)."""
    with _TRAININGS_LOCK:
        if _STOPPING.is_set():
            raise RuntimeError("this process is stopping: no new training")
        proc = subprocess.Popen(cmd, **popen_kwargs)
        _TRAININGS.add(proc)
    return proc


def end_training(proc: subprocess.Popen) -> None:
    """Forget a training that has ended (or been stopped)."""
    with _TRAININGS_LOCK:
        _TRAININGS.discard(proc)


def stop_trainings_on_sigterm() -> None:
    """Make SIGTERM (``kill PID``) stop this process's trainings too, then exit with 143.

    Without it a killed harness leaves its fairseq-train children training, writing into run
    folders that a restarted harness resumes from: two trainers on one folder. A training stopped
    this way resumes like any interrupted one (after its last evaluated segment, or from scratch).
    Call from the main thread of a program's ``main``."""

    def stop(signum, frame):
        with _TRAININGS_LOCK:
            _STOPPING.set()
            running = list(_TRAININGS)
        for proc in running:
            proc.terminate()
        for proc in running:  # gone before this process is: nothing writes into a run folder after it
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.warning("stopped by signal %d: %d training(s) terminated; a rerun resumes them", signum, len(running))
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def pack_groups(slots: List[list], places: int) -> List[list]:
    """Pack slots of jobs into groups of at most ``places`` jobs that run side by side.

    Every group but the last is full: the free places of the last group are filled from the next
    slot first, and the rest of that slot makes new groups. So no run trains alone (on a less loaded
    machine than its peers) unless it is the very last, and no core idles: three systems per seed
    on two places make 1.5 groups per seed, not 2. A slot's jobs share groups where the places allow.

    >>> pack_groups([["a1", "b1", "c1"], ["a2", "b2", "c2"]], 2)
    [['a1', 'b1'], ['c1', 'a2'], ['b2', 'c2']]
    >>> pack_groups([["c1"], ["a2", "b2"], ["a3", "b3", "c3"]], 2)
    [['c1', 'a2'], ['b2', 'a3'], ['b3', 'c3']]
    """
    groups: List[list] = []
    for todo in slots:
        todo = list(todo)
        free = places - len(groups[-1]) if groups else 0
        if free > 0:
            groups[-1] += todo[:free]
            todo = todo[free:]
        groups += [todo[i:i + places] for i in range(0, len(todo), places)]
    return groups


class Race:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work_dir)
        self.results = Path(args.results_dir)
        self.data_root = Path(args.data_root)
        self._info = None

    def record_machine(self) -> dict:
        """The machine, its load and the commit, recorded once, as the first stage starts (before
        its runs load the machine): what every results file of this process reports."""
        if self._info is None:
            self._info = run_info(self.args)
        return self._info

    def data(self, pair: str) -> Path:
        return self.data_root / f"multi30k.{pair}"

    def job_data(self, job: Job) -> Path:
        """The prepared folder ``job`` trains on: its own ``data`` (e.g. distilled) or the pair's."""
        return Path(job.data) if job.data else self.data(job.pair)

    def check_data(self, pairs) -> None:
        for pair in pairs:
            if not (self.data(pair) / "prep.json").is_file():
                raise SystemExit(f"{self.data(pair)} is not prepared: run scripts/prepare_multi30k.py --pairs {pair} "
                                 f"--destdir-root {self.data_root} first")

    # -- one run --------------------------------------------------------------------------------

    def spec(self, job: Job) -> dict:
        """Everything that determines a run's figures: a cached result is reused only if equal."""
        spec = {k: v for k, v in asdict(job).items() if k not in ("label", "estimate_minutes")}
        if spec["patience"] == PATIENCE:  # runs from before patience was a setting had this one: their
            del spec["patience"]          # recorded settings (and published rows) stay equal
        spec.update(extra_train_args=self.args.extra_train_args, data=str(self.job_data(job).resolve()),
                    threads=self.args.threads)
        return json.loads(json.dumps(spec))  # as it reads back from result.json

    def run_dir(self, job: Job) -> Path:
        return self.work / job.key

    def cached(self, job: Job) -> Optional[dict]:
        result = read_json(self.run_dir(job) / "result.json")
        if result is not None and result.get("spec") == self.spec(job):
            return result
        return None

    def train(self, job: Job, tag: str, max_update: Optional[int] = None, fresh: bool = True,
              log_name: str = "train.log", progress=None) -> (str, LogTracker):
        """Train with scripts/train_multi30k.sh (one thread), following the log for progress
        messages; ``fresh`` starts from scratch, else fairseq resumes from checkpoint_last.pt."""
        save_dir = self.run_dir(job)
        save_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for old in [*save_dir.glob("checkpoint*.pt*"), *save_dir.glob("curve_*.pt"), *save_dir.glob("train*.log")]:
                old.unlink()  # a fresh run: budgets are wall-clock time from scratch
            for old in ("result.json", "progress.json"):
                (save_dir / old).unlink(missing_ok=True)
        flags, env_extra = recipe_flags(job.system, job.recipe)
        max_update = max_update or job.max_update
        extra = list(job.train_args) + (["--max-update", str(max_update)] if max_update else [])
        cmd = [str(REPO / "scripts" / "train_multi30k.sh"), job.pair, *flags, *extra,
               *shlex.split(self.args.extra_train_args or "")]
        threads = str(self.args.threads)
        env = dict(os.environ, MODEL=job.system, MINUTES=f"{job.minutes:g}", DATA=str(self.job_data(job)),
                   SAVE_DIR=str(save_dir), LOG_FORMAT="json", SEED=str(job.seed),
                   FAIRSEQ_TRAIN=str(Path(sys.executable).parent / "fairseq-train"),
                   OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, **env_extra)
        env_text = " ".join(f"{k}={env[k]}" for k in ("MODEL", "MINUTES", "SEED", *env_extra))
        (save_dir / "command.txt").write_text(f"{env_text} {shlex.join(cmd)}\n")
        log.info("%s %s: %s %s", tag, "start" if fresh else "resume", env_text, shlex.join(cmd[1:]))
        tracker = LogTracker()
        last_report = time.time()
        proc = start_training(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1, errors="replace")
        lines = []
        try:
            with open(save_dir / log_name, "w") as logfile:
                for line in proc.stdout:
                    logfile.write(line)
                    lines.append(line)
                    event = tracker.feed(line)
                    if event in ("train", "valid") and time.time() - last_report >= self.args.progress_seconds:
                        last_report = time.time()
                        log.info("%s %s", tag,
                                 progress(tracker) if progress else self.progress_text(job, tracker, max_update))
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # this script was interrupted: do not leave the training behind
                proc.terminate()
                proc.wait()
            end_training(proc)
        text = "".join(lines)
        diverged = next((mark for mark in DIVERGED_MARKS if mark in text), None) if rc != 0 else None
        if diverged:
            raise TrainingDiverged(f"{tag}: the training diverged (fairseq-train: {diverged}) after update "
                                   f"{tracker.updates} or later; log in {save_dir / log_name}", tracker.updates,
                                   save_dir / log_name)
        if rc != 0:
            raise RuntimeError(f"{tag}: fairseq-train failed (exit {rc}); "
                               f"log in {save_dir / log_name}:\n{text[-3000:]}")
        if tracker.start is None and "this run is already finished" not in text:  # (resumed after its last update)
            raise RuntimeError(f"{tag}: fairseq-train never started training; log in {save_dir / log_name}")
        return text, tracker

    def progress_text(self, job: Job, tr: LogTracker, max_update: Optional[int]) -> str:
        if max_update:
            minutes = tr.train_minutes()
            eta = minutes / max(tr.updates, 1) * (max_update - tr.updates)
            text = f"{tr.updates}/{max_update} updates, {minutes:.1f} min, ETA {minutes_text(eta)}"
        else:
            text = (f"{tr.updates} updates, {tr.wall_minutes():.1f}/{job.minutes:g} min, "
                    f"ETA {minutes_text(max(job.minutes - tr.wall_minutes(), 0))} + evaluation")
        if tr.points:
            text += f", valid loss {tr.points[-1]['valid_loss']:.3f}"
        return text

    def score(self, job: Job, checkpoint: Path, split: str) -> dict:
        r = evaluate(self.job_data(job), checkpoint, split=split, beam=4, batch_size=128, num_samples=2,
                     threads=self.args.threads)
        d = result_dict(r)
        d.pop("command", None)
        return d

    def score_valid(self, job: Job, save_dir: Path, figures: dict, tag: str) -> dict:
        """A ``finish`` of :meth:`run_jobs` for update-budget runs: valid sacreBLEU of the run's
        checkpoint_last.pt; then, unless ``--keep-checkpoints``, its checkpoints are deleted."""
        valid = self.score(job, save_dir / "checkpoint_last.pt", "valid")
        log.info("%s valid sacreBLEU %.2f after %d updates", tag, valid["sacrebleu"], figures["updates"])
        self.drop_checkpoints(save_dir)
        return {"figures": figures, "valid": valid}

    def score_test_valid(self, job: Job, save_dir: Path, figures: dict, tag: str) -> dict:
        """A ``finish`` of :meth:`run_jobs` for timed runs: test and valid sacreBLEU of the run's
        checkpoint_last.pt; then, unless ``--keep-checkpoints``, the other checkpoints are deleted
        (the scored one stays: the decoding benchmarks time trained models)."""
        evals = {split: self.score(job, save_dir / "checkpoint_last.pt", split) for split in SPLITS}
        log.info("%s %d updates; sacreBLEU test %.2f, valid %.2f", tag, figures["updates"],
                 evals["test"]["sacrebleu"], evals["valid"]["sacrebleu"])
        self.drop_checkpoints(save_dir, keep="checkpoint_last.pt")
        return {"figures": figures, "eval": evals}

    def drop_checkpoints(self, save_dir: Path, keep: str = "") -> None:
        """Unless ``--keep-checkpoints``: delete the run's checkpoints, all but the file named ``keep``."""
        if not self.args.keep_checkpoints:
            for p in save_dir.glob("checkpoint*.pt"):
                if p.name != keep:
                    p.unlink()

    def resumable(self, job: Job) -> bool:
        """An interrupted update-budget run (the sweep) resumes from its checkpoint_last.pt when it
        was started with the same settings (``started.json``, the spec :meth:`cached` compares):
        its figures depend on updates, not on wall-clock time."""
        save_dir = self.run_dir(job)
        return (job.max_update is not None and (save_dir / "checkpoint_last.pt").is_file()
                and read_json(save_dir / "started.json") == self.spec(job))

    def execute(self, job: Job, finish, tag: str) -> dict:
        start = time.time()
        resumed = self.resumable(job)
        earlier = (self.run_dir(job) / "train.log").read_text(errors="replace") if resumed else ""
        write_json(self.run_dir(job) / "started.json", self.spec(job))
        text, tracker = self.train(job, tag, fresh=not resumed,
                                   log_name="train_resumed.log" if resumed else "train.log")
        text = earlier + text
        try:
            figures = training_figures(text)
            figures.pop("valid_curve", None)
        except (RuntimeError, ZeroDivisionError, KeyError, ValueError):
            # an interrupted run may lack fairseq's end-of-epoch records; a tiny one, any train_wall
            figures = {"updates": tracker.updates}
        figures["updates"] = max(figures.get("updates", 0), tracker.updates)
        figures["train_minutes"] = round(tracker.train_minutes(), 2)
        figures["wall_minutes"] = round(tracker.wall_minutes(), 2)
        figures["valid_points"] = tracker.points
        trained_by = segment_machine(self.record_machine())  # before scoring loads the machine
        figures["stop_reason"] = tracker.stop_reason
        if resumed:
            figures["resumed"] = "interrupted, resumed from checkpoint_last.pt; minutes count the resumed part only"
        result = finish(job, self.run_dir(job), figures, tag)
        result.update({"stage": job.stage, "name": job.name, "system": job.system, "pair": job.pair, "seed": job.seed,
                       "recipe": job.recipe, "recipe_text": recipe_text(job.system, job.recipe),
                       "run_minutes": round((time.time() - start) / 60, 2), "spec": self.spec(job),
                       "command": (self.run_dir(job) / "command.txt").read_text().strip(),
                       "finished": datetime.now().isoformat(timespec="seconds"), "trained_by": trained_by})
        write_json(self.run_dir(job) / "result.json", result)
        return result

    def run_jobs(self, stage: str, slots: List[List[Job]], finish=None, runner=None) -> List[dict]:
        """Run the jobs, ``--parallel`` at a time in the order given, skip the cached ones; return
        every result in job order.

        Runs of a fixed length (minutes or updates) are packed into full groups that start together
        (:func:`pack_groups`: no run trains alone but the very last). Runs that stop early
        (``early_stop``: the curves) have no common length, so they queue instead: each starts as
        soon as a place frees up, in the order given, and no core waits for a group's longest run;
        the machine still has ``--parallel`` runs on it at every moment but the last runs'."""
        self.record_machine()
        jobs = [j for slot in slots for j in slot]
        results: Dict[str, dict] = {}
        todo_slots = []
        for slot in slots:
            todo = []
            for job in slot:
                hit = self.cached(job)
                if hit is not None:
                    results[job.name] = hit
                else:
                    todo.append(job)
            todo_slots.append(todo)
        todo = [j for slot in todo_slots for j in slot]
        queue = bool(todo) and all(j.early_stop for j in todo)
        places = self.args.parallel
        todo_groups = [] if queue else pack_groups(todo_slots, places)
        estimate = (sum(j.estimate_minutes for j in todo) / places if queue
                    else sum(max(j.estimate_minutes for j in g) for g in todo_groups))
        n_cached = len(results)
        log.info("[%s] %d runs: %d cached (skipped), %d to run, %d at a time%s; estimated %s", stage, len(jobs),
                 n_cached, len(todo), places, " (each as a place frees up)" if queue else "", minutes_text(estimate))
        stage_start = time.time()
        position = {j.name: i + 1 for i, j in enumerate(jobs)}

        def one(job):
            tag = f"[{stage} {position[job.name]}/{len(jobs)} {job.label or job.name}]"
            return runner(job, tag) if runner else self.execute(job, finish, tag)

        def progress(finished_runs: int, eta: float) -> None:
            log.info("[%s] %d/%d runs done, %s elapsed, ETA %s", stage, n_cached + finished_runs, len(jobs),
                     minutes_text((time.time() - stage_start) / 60), minutes_text(eta))

        if queue:
            with ThreadPoolExecutor(places) as pool:
                futures = {pool.submit(one, job): job for job in todo}
                try:
                    for n, future in enumerate(as_completed(futures), 1):
                        results[futures[future].name] = future.result()
                        # runs of unequal lengths (and resumed ones) give no pace: the a-priori estimates
                        progress(n, sum(j.estimate_minutes for j in todo if j.name not in results) / places)
                except BaseException as err:
                    running = [j.label or j.name for f, j in futures.items() if f.running()]
                    if running and not isinstance(err, KeyboardInterrupt):  # said now, not after the others end
                        log.error("[%s] a run failed (%s: %s); waiting for the running run(s) to finish: %s", stage,
                                  type(err).__name__, str(err).splitlines()[0] if str(err) else "", ", ".join(running))
                    pool.shutdown(wait=True, cancel_futures=True)  # the queued runs do not start
                    raise
        else:
            finished = 0
            for gi, group in enumerate(todo_groups, 1):
                with ThreadPoolExecutor(len(group)) as pool:
                    for job, result in zip(group, pool.map(one, group)):
                        results[job.name] = result
                finished += len(group)
                progress(finished, (time.time() - stage_start) / 60 / gi * (len(todo_groups) - gi))
        return [results[j.name] for j in jobs]

    # -- stage 1: sweep ----------------------------------------------------------------------------

    def sweep(self) -> dict:
        a = self.args
        pair = "en-de"
        self.check_data([pair])
        grid = sweep_grid(a.quick, a.sweep_lrs, a.sweep_warmups)
        jobs = {s: [Job("sweep", recipe_name(s, r), s, pair, 1, r, label=recipe_name(s, r), max_update=a.sweep_updates,
                        train_args=["--save-interval-updates", str(a.sweep_updates), "--keep-interval-updates", "1"],
                        estimate_minutes=a.sweep_updates * 1.5 / 60 + 1.5)
                    for r in grid[s]] for s in SYSTEMS}
        slots = [[r, t] for r, t in zip(jobs["resmlp"], jobs["transformer"])]

        results = self.run_jobs("sweep", slots, self.score_valid)
        rows = []
        for r in results + self.outside_grid(jobs):
            rows.append({"system": r["system"], "name": r["name"], "recipe": r["recipe"],
                         "recipe_text": r["recipe_text"], "valid_sacrebleu": r["valid"]["sacrebleu"],
                         "updates": r["figures"]["updates"], "train_minutes": r["figures"]["train_minutes"],
                         "last_valid_loss": r["figures"]["valid_points"][-1]["valid_loss"]
                         if r["figures"]["valid_points"] else None,
                         "words_per_second": r["figures"].get("words_per_second"),
                         "signature": r["valid"]["sacrebleu_signature"], "resumed": bool(r["figures"].get("resumed")),
                         "in_grid": r.get("in_grid", True)})
        best = {}
        for s in SYSTEMS:
            mine = [row for row in rows if row["system"] == s and row["in_grid"]]
            top = max(mine, key=lambda row: row["valid_sacrebleu"])  # ties: the first in grid order
            best[s] = {"name": top["name"], "recipe": top["recipe"], "valid_sacrebleu": top["valid_sacrebleu"]}
            for row in rows:
                if row["system"] == s:
                    row["best"] = row is top
        notes = []
        if len(a.sweep_lrs) > 1:
            edge = [s for s in SYSTEMS if best[s]["recipe"]["lr"] in (min(a.sweep_lrs), max(a.sweep_lrs))]
            if edge:
                notes.append(f"The best learning rate of {' and '.join(edge)} is at "
                             "the edge of the grid: a wider grid may find better.")
        if any(not row["in_grid"] for row in rows):
            notes.append("Rows in italics are earlier runs of this sweep's settings outside the grid asked for: "
                         "shown, not eligible.")
        out = {"settings": {"pair": pair, "updates": a.sweep_updates, "seed": 1, "quick": a.quick,
                            "grid": {"lr": list(a.sweep_lrs), "warmup": list(a.sweep_warmups),
                                     "resmlp layerscale_init": list(SWEEP_LAYERSCALE),
                                     "transformer norm": list(SWEEP_NORMS)},
                            "configurations": {s: len(grid[s]) for s in SYSTEMS},
                            "score": "sacreBLEU of checkpoint_last.pt on the valid split, beam 4 (mt_tools.evaluate)",
                            "data_root": str(self.data_root), "work_dir": str(self.work / "sweep"),
                            "extra_train_args": a.extra_train_args, "command": a.command},
               "machine": self.record_machine(), "rows": rows, "best": best, "notes": notes}
        out.update({k: v for k, v in (("title", a.title), ("intro", a.intro)) if v})
        self.publish("mt_sweep", out, sweep_markdown(out))
        return out

    def outside_grid(self, jobs: Dict[str, List[Job]]) -> List[dict]:
        """Finished sweep runs in the work folder whose settings match this sweep's but for a
        recipe outside the grid asked for (e.g. after ``--sweep-warmups`` narrowed it)."""
        names = {j.name for js in jobs.values() for j in js}
        reference = {s: self.spec(js[0]) for s, js in jobs.items() if js}
        found = []
        for path in sorted((self.work / "sweep").glob("*/result.json")):
            result = read_json(path)
            if not result or result.get("name") in names or result.get("system") not in reference:
                continue
            spec, ref = result.get("spec", {}), reference[result["system"]]
            if {k: v for k, v in spec.items() if k not in ("name", "recipe")} == \
                    {k: v for k, v in ref.items() if k not in ("name", "recipe")}:
                found.append({**result, "in_grid": False})
        return found

    # -- stage 2: race -------------------------------------------------------------------------------

    def recipes(self) -> (Dict[str, dict], str):
        return tuned_recipes(self.results / "mt_sweep.json", quick=self.args.quick)

    def race(self) -> dict:
        a = self.args
        self.check_data(a.pairs)
        recipes, source = self.recipes()
        log.info("[race] recipes: %s -- %s", "; ".join(f"{s}: {recipe_text(s, recipes[s])}" for s in SYSTEMS), source)
        slots = [[Job("race", f"{pair}.{s}.seed{seed}", s, pair, seed, recipes[s], label=f"{pair} {s} seed {seed}",
                      minutes=a.minutes, estimate_minutes=a.minutes + 3) for s in SYSTEMS]
                 for pair in a.pairs for seed in range(1, a.seeds + 1)]
        results = self.run_jobs("race", slots, self.score_test_valid)
        runs = [{"pair": r["pair"], "system": r["system"], "seed": r["seed"], "recipe": r["recipe"],
                 "updates": r["figures"]["updates"], "wall_minutes": r["figures"]["wall_minutes"],
                 "words_per_second": r["figures"].get("words_per_second"),
                 "sacrebleu": {split: r["eval"][split]["sacrebleu"] for split in SPLITS},
                 "eval": r["eval"], "trained_by": r.get("trained_by")} for r in results]
        summary = {}
        for pair in a.pairs:
            ps = {}
            for s in SYSTEMS:
                mine = sorted((r for r in runs if r["pair"] == pair and r["system"] == s), key=lambda r: r["seed"])
                ps[s] = {split: mean_std([r["sacrebleu"][split] for r in mine]) for split in SPLITS}
                ps[s]["updates"] = mean_std([r["updates"] for r in mine])
            diff = {}
            for split in SPLITS:
                by_seed = {s: {r["seed"]: r["sacrebleu"][split] for r in runs if r["pair"] == pair and r["system"] == s}
                           for s in SYSTEMS}
                paired = [by_seed["resmlp"][k] - by_seed["transformer"][k] for k in sorted(by_seed["resmlp"])]
                diff[split] = mean_std(paired)
            ps["resmlp_minus_transformer"] = diff
            summary[pair] = ps
        out = {"settings": {"minutes": a.minutes, "seeds": a.seeds, "pairs": a.pairs, "quick": a.quick,
                            "recipes": recipes, "recipe_source": source,
                            "budget": "same wall-clock training time per run (fairseq --stop-time-hours, "
                                      "from scripts/train_multi30k.sh)",
                            "checkpoint": "checkpoint_last.pt (the model at the end of the budget)",
                            "generation": {"beam": 4, "batch_size": 128}, "data_root": str(self.data_root),
                            "work_dir": str(self.work / "race"), "extra_train_args": a.extra_train_args,
                            "command": a.command},
               "machine": self.record_machine(), "runs": runs, "summary": summary}
        self.publish("mt_race", out, race_markdown(out))
        return out

    # -- stage 3: curves ---------------------------------------------------------------------------

    def curves(self) -> dict:
        a = self.args
        pairs = [p for p in ("en-de", "en-fr") if p in a.pairs]
        self.check_data(pairs)
        recipes, source = self.recipes()
        log.info("[curves] recipes: %s -- %s", "; ".join(f"{s}: {recipe_text(s, recipes[s])}" for s in SYSTEMS), source)
        budgets = {"en-de": a.max_minutes, "en-fr": a.fr_minutes}
        early = {"en-de": True, "en-fr": False}
        slots = [[Job("curves", f"{pair}.{s}", s, pair, 1, recipes[s], label=f"{pair} {s}", cap_minutes=budgets[pair],
                      segment_updates=a.eval_every, early_stop=early[pair], train_args=list(SEGMENT_ARGS),
                      estimate_minutes=budgets[pair] * 1.3 + 6) for s in SYSTEMS] for pair in pairs]
        results = self.run_jobs("curves", slots, runner=self.curve_run)
        out = {"settings": {"pairs": pairs, "eval_every": a.eval_every, "patience": PATIENCE,
                            "average_last": AVERAGE_LAST, "max_training_minutes": {p: budgets[p] for p in pairs},
                            "early_stopping": {p: early[p] for p in pairs},
                            "recipes": recipes, "recipe_source": source, "quick": a.quick,
                            "method": (f"training in segments of {a.eval_every} updates (fairseq-train "
                                       "--max-update, resumed from checkpoint_last.pt); after each, valid "
                                       "sacreBLEU (mt_tools.evaluate, beam 4) while that system's "
                                       f"training waits; early stopping after {PATIENCE} evaluations "
                                       "without improvement; minutes = training time from the fairseq log "
                                       "timestamps, validation, checkpoint writing and restarts left out"),
                            "data_root": str(self.data_root), "work_dir": str(self.work / "curves"),
                            "extra_train_args": a.extra_train_args, "command": a.command},
               "machine": self.record_machine(), "pairs": {}}
        for r in results:
            entry = {k: v for k, v in r.items() if k not in ("spec", "stage", "name", "pair", "system", "seed")}
            out["pairs"].setdefault(r["pair"], {})[r["system"]] = entry
        self.publish("mt_curves", out, curves_markdown(out))
        plot_curves(out, self.results)
        return out

    def curve_run(self, job: Job, tag: str) -> dict:
        """One system's curve: segments of --eval-every updates, each scored on valid, until the
        validation BLEU stops improving (if early stopping) or the training-minutes budget. A run
        that diverges (:class:`TrainingDiverged`) is finished at its last evaluated segment, its
        result saying so (``diverged``), so that the stage's other runs go on; one that diverges
        before its first evaluation has nothing to report, and raises."""
        save_dir = self.run_dir(job)
        spec = self.spec(job)
        remove_stale_temporaries(save_dir)  # the partial copies of a killed run
        prog = read_json(save_dir / "progress.json")
        started = prog.get("spec") if prog else None  # the settings the run in save_dir was started with
        if prog and prog["points"] and started != spec and run_grew(spec, started):  # its budget or patience shrank
            smaller = (f"a budget of {started['cap_minutes']:g} training minutes; --max-minutes "
                       f"{spec['cap_minutes']:g}" if spec["cap_minutes"] < started["cap_minutes"] else
                       f"an early-stopping patience of {started.get('patience', PATIENCE)}; --patience {job.patience}")
            raise SystemExit(f"{tag}: {save_dir} holds this run trained with {smaller} is smaller and would train "
                             "it again from scratch, deleting it. Give at least the run's, or move the folder away "
                             "to start over.")
        fresh = not (prog and (started == spec or run_grew(started, spec)) and prog["points"]
                     and (save_dir / "checkpoint_last.pt").is_file()
                     and (save_dir / prog["points"][-1]["checkpoint"]).is_file())
        if fresh:
            prog = {"spec": spec, "points": []}
        else:
            if started != spec:
                log.info("%s the run goes on: training-minutes budget %g -> %g, early-stopping patience %d -> %d",
                         tag, started["cap_minutes"], spec["cap_minutes"], started.get("patience", PATIENCE),
                         job.patience)
                prog["spec"] = spec
                write_json(save_dir / "progress.json", prog)
            log.info("%s resuming after %d updates, %.2f training minutes", tag, prog["points"][-1]["updates"],
                     prog["points"][-1]["train_minutes"])
        early = job.early_stop
        started = time.time()
        diverged = None
        while True:
            points = prog["points"]
            reason = curve_stop_reason(points, job.cap_minutes, early, job.patience)
            if reason:
                break
            target = (len(points) + 1) * job.segment_updates
            done_minutes = points[-1]["train_minutes"] if points else 0.0
            log_path = save_dir / f"train.{target:07d}.log"
            tracker = None
            saved = re.compile(rf"\| Saved checkpoint \S+ \(epoch \d+ @ {target} updates")
            if not fresh and log_path.is_file() and saved.search(log_path.read_text(errors="replace")):
                tracker = LogTracker()  # saved before an interruption: its log has the figures
                for line in log_path.read_text(errors="replace").splitlines():
                    tracker.feed(line)
            else:
                try:
                    _, tracker = self.train(
                        job, tag, max_update=target, fresh=fresh, log_name=log_path.name,
                        progress=lambda tr: (f"{tr.updates}/{target} updates, {done_minutes + tr.train_minutes():.2f}/"
                                             f"{job.cap_minutes:g} training min"))
                except TrainingDiverged as err:
                    if not points:  # no evaluated checkpoint to report: the recipe fails from the start
                        raise
                    # finished, with what it reached: a rerun would diverge again (one thread, fixed seeds)
                    after = max(err.updates, points[-1]["updates"])
                    diverged = {"after_update": after, "segment": [points[-1]["updates"], target],
                                "log": err.log.name}
                    reason = f"diverged: non-finite gradients after update {after}"
                    log.warning("%s %s (the segment to %d updates; log %s): the run is finished with its evaluations "
                                "up to %d updates. To train it again, change its recipe or move %s away.", tag, reason,
                                target, err.log, points[-1]["updates"], save_dir)
                    break
                fresh = False
            if tracker.updates != target or not tracker.points:
                raise RuntimeError(f"{tag}: the segment to {target} updates ended at {tracker.updates}; see {log_path}")
            trained_by = segment_machine(self.record_machine())  # before scoring loads the machine
            checkpoint = save_dir / f"curve_{target:07d}.pt"
            copy_atomic(save_dir / "checkpoint_last.pt", checkpoint)
            valid = self.score(job, checkpoint, "valid")
            point = {"updates": target, "train_minutes": round(done_minutes + tracker.points[-1]["train_minutes"], 3),
                     "segment_wall_minutes": round(tracker.wall_minutes(), 3), "valid_bleu": valid["sacrebleu"],
                     "valid_loss": tracker.points[-1]["valid_loss"], "checkpoint": checkpoint.name,
                     "evaluated": datetime.now().isoformat(timespec="seconds"), "trained_by": trained_by}
            points.append(point)
            best, since = best_point(points)
            if best is point:
                copy_atomic(checkpoint, save_dir / "checkpoint_best_bleu.pt")
            for old in sorted(save_dir.glob("curve_*.pt"))[:-AVERAGE_LAST]:
                old.unlink()  # the last few are kept for averaging, the best as checkpoint_best_bleu.pt
            write_json(save_dir / "progress.json", prog)
            log.info("%s %d updates, %.2f/%g training min: valid sacreBLEU %.2f (best %.2f @ %d, %d evaluation(s) "
                     "without improvement)%s", tag, target, point["train_minutes"], job.cap_minutes,
                     point["valid_bleu"], best["valid_bleu"], best["updates"], since,
                     f"; at most {minutes_text(job.cap_minutes - point['train_minutes'])} of training left"
                     if point["train_minutes"] < job.cap_minutes else "")
        points = prog["points"]
        best, _ = best_point(points)
        last = points[-1]
        converged = reason.startswith("early stop")
        # averaging is for a plateau: a run stopped by its budget is still rising, and its last
        # checkpoints span early, weaker models
        averaged_from = sorted(save_dir.glob("curve_*.pt"))[-AVERAGE_LAST:] if converged else []
        last_test = self.score(job, save_dir / last["checkpoint"], "test")
        best_test = last_test if best is last else self.score(job, save_dir / "checkpoint_best_bleu.pt", "test")
        evals = {"best": {"test": best_test, "valid": {"sacrebleu": best["valid_bleu"]}},
                 "last": {"test": last_test, "valid": {"sacrebleu": last["valid_bleu"]}}}
        if averaged_from:
            averaged = average_checkpoints(averaged_from, save_dir / "checkpoint_averaged.pt")
            evals["averaged"] = {split: self.score(job, averaged, split) for split in SPLITS}
        for model, e in evals.items():
            log.info("%s %s model: sacreBLEU test %.2f, valid %.2f", tag, model, e["test"]["sacrebleu"],
                     e["valid"]["sacrebleu"])
        result = {"points": points, "updates": last["updates"], "train_minutes": last["train_minutes"],
                  "stop_reason": reason, "converged": converged, "diverged": diverged, "early_stopping": early,
                  "cap_minutes": job.cap_minutes, "best_point": best, "eval": evals,
                  "averaged_checkpoints": [p.name for p in averaged_from],
                  "notes": "best = checkpoint of the best validation BLEU (chosen on "
                           "valid: its valid score is optimistic); valid scores of best "
                           "and last are those of the curve (same checkpoint, same scorer)",
                  "stage": job.stage, "name": job.name, "system": job.system, "pair": job.pair, "seed": job.seed,
                  "recipe": job.recipe, "recipe_text": recipe_text(job.system, job.recipe),
                  "run_minutes_this_session": round((time.time() - started) / 60, 2), "spec": spec,
                  "command": (save_dir / "command.txt").read_text().strip(),
                  "finished": datetime.now().isoformat(timespec="seconds")}
        write_json(save_dir / "result.json", result)
        return result

    # -- stage 4: report -----------------------------------------------------------------------------

    def report(self) -> dict:
        loaded = {name: read_json(self.results / f"{name}.json") for name in ("mt_sweep", "mt_race", "mt_curves")}
        renderers = {"mt_sweep": sweep_markdown, "mt_race": race_markdown, "mt_curves": curves_markdown}
        for name, data in loaded.items():
            if data is not None:  # tables rebuilt from the JSON
                write_result(self.results / f"{name}.md", renderers[name](data))
        if loaded["mt_curves"] is not None:
            plot_curves(loaded["mt_curves"], self.results)
        goals = assess_goals(loaded["mt_race"], loaded["mt_curves"])
        out = {"goals": goals, "sources": {k: (str(self.results / f"{k}.json") if v else None)
                                           for k, v in loaded.items()},
               "machine": self.record_machine(), "command": self.args.command}
        text = report_markdown(out, loaded)
        write_result(self.results / "mt_report.json", json.dumps(out, indent=1) + "\n")
        write_result(self.results / "mt_report.md", text)
        print(text)
        log.info("wrote %s and %s", self.results / "mt_report.md", self.results / "mt_report.json")
        return out

    def publish(self, stem: str, data: dict, text: str) -> None:
        write_result(self.results / f"{stem}.json", json.dumps(data, indent=1) + "\n")
        write_result(self.results / f"{stem}.md", text)
        print(text)
        log.info("wrote %s and %s", self.results / f"{stem}.json", self.results / f"{stem}.md")


#: the settings of a curve run that may grow while the run goes on (:func:`run_grew`)
GROWING = ("cap_minutes", "patience")


def run_grew(started: Optional[dict], spec: dict) -> bool:
    """Whether a curve run started with the settings ``started`` goes on as a run of ``spec``:
    the two differ only by a training-minutes budget or an early-stopping patience that grew
    (neither shrank; a spec without ``patience`` has :data:`PATIENCE`). A run stopped at the
    smaller budget or patience is the start of the longer one, segment for segment (the same
    updates, evaluations and checkpoints), so raising ``--max-minutes`` or the patience extends it
    instead of training it again."""
    if not started or started.get("cap_minutes") is None or spec.get("cap_minutes") is None:
        return False
    default = {"patience": PATIENCE}
    return (all(spec.get(k, default.get(k)) >= started.get(k, default.get(k)) for k in GROWING)
            and {**started, **dict.fromkeys(GROWING)} == {**spec, **dict.fromkeys(GROWING)})


def continue_run(source: Path, dest: Path, spec: dict) -> Optional[dict]:
    """Start the curve run in ``dest`` as the continuation of the one in ``source``, when ``dest``
    has no run yet and ``source``'s settings grow into ``spec`` (:func:`run_grew`; the name may
    differ, and the copy takes ``spec``'s): its progress, checkpoints and logs are copied
    (``source`` is left as it is), and :meth:`Race.curve_run` then goes on from its last evaluated
    segment. For a longer run under another name (another page), e.g. a larger patience, that
    starts where the published run stopped instead of training it again. Returns the copied
    progress (``progress.json``), or None when nothing was copied."""
    prog = read_json(source / "progress.json")
    if not prog or not prog["points"] or read_json(dest / "progress.json") is not None:
        return None
    prog["spec"] = {**prog["spec"], "name": spec["name"]}  # the same run, under its new name
    if not run_grew(prog["spec"], spec):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and (path.suffix in (".pt", ".log") or path.name == "command.txt") \
                and path.name != "checkpoint_averaged.pt":
            copy_atomic(path, dest / path.name)
    write_json(dest / "progress.json", prog)  # last: a copy cut short is no run, and is copied again
    return prog


def best_point(points: List[dict]) -> tuple:
    """``(point, evaluations since it)``: a curve's point of the best valid sacreBLEU (the first of
    equal scores) and how many evaluations came after it, the count the stopping rule reads."""
    best = max(points, key=lambda p: p["valid_bleu"])  # max keeps the first of equal scores
    return best, len(points) - 1 - points.index(best)


def curve_stop_reason(points: List[dict], cap_minutes: float, early: bool,
                      patience: int = PATIENCE) -> Optional[str]:
    """Why a curve is finished, or None: no validation BLEU improvement in the last ``patience``
    evaluations (if early stopping), or the training-minutes budget reached."""
    if points and early and best_point(points)[1] >= patience:
        return f"early stop: validation BLEU did not improve for {patience} evaluations"
    if points and points[-1]["train_minutes"] >= cap_minutes:
        return f"training-minutes budget ({cap_minutes:g} min) reached"
    return None


# --- tables, plots, goals -------------------------------------------------------------------------


def _machine_identity(info: dict) -> dict:
    """CPU, host and commit (``+`` when tracked files differed from it) of a recorded machine."""
    commit = str(info.get("git_commit"))[:10] + ("+" if info.get("git_dirty") else "")
    return {"cpu": info.get("cpu"), "host": info.get("hostname"), "commit": commit}


def segment_machine(info: dict) -> dict:
    """What a curve point or race run records of the process that trained (or, for a segment saved
    before an interruption, evaluated) it: :func:`_machine_identity` of ``info`` and the machine's
    5-minute load average as it ended, so a page spread over several invocations says where and
    beside what each segment trained."""
    return {**_machine_identity(info), "load_5min": round(os.getloadavg()[1], 2)}


def trained_on_lines(points: List[dict], machine: dict, unit: str = "segment") -> List[str]:
    """A page's paragraph (``[text, ""]``) on where its runs' segments trained, when that is not all
    said by its machine line (one CPU, host and commit: the report's); ``[]`` when it is, and when no
    point recorded it (the pages of runs from before points recorded their machine). ``points``:
    every curve point of the page, or every run of a race (``unit="run"``); a 5-minute load average
    at least 0.5 above the runs ``machine`` planned at a time means the segment shared the machine
    with other work."""
    recorded = [p["trained_by"] for p in points if p.get("trained_by")]
    if not recorded:
        return []
    planned_load = machine.get("runs_at_a_time") or 1
    here = _machine_identity(machine)
    places = []
    if len(recorded) < len(points) or any({k: t[k] for k in here} != here for t in recorded):
        by_place: Dict[tuple, Dict[str, int]] = {}
        for t in recorded:
            commits = by_place.setdefault((t["cpu"], t["host"]), {})
            commits[t["commit"]] = commits.get(t["commit"], 0) + 1
        places = [f"{cpu} (host {host}): " + ", ".join(f"{n} at commit {c}" for c, n in commits.items())
                  for (cpu, host), commits in by_place.items()]
        if len(recorded) < len(points):
            places.append(f"{len(points) - len(recorded)} trained before {unit}s recorded their machine")
    loaded = [t["load_5min"] for t in recorded if t["load_5min"] >= planned_load + 0.5]
    if not places and not loaded:
        return []
    text = (f"Where the {len(points)} {unit}{'s' if len(points) != 1 else ''} trained: "
            + ("; ".join(places) if places else "as above"))
    if loaded:
        text += (f". {len(loaded)} ended with a 5-minute load average of {planned_load + 0.5:g} or more (at most "
                 f"{max(loaded):.2f}; {planned_load} run(s) at a time planned): their minutes include other work's")
    return [text + ".", ""]


def _machine_line(m: dict) -> str:
    return (f"Machine: {m.get('cpu')}, {m.get('cores')} cores, GPU: {m.get('gpu') or 'none'}; python "
            f"{m.get('python')}, torch {m.get('torch')}, fairseq {m.get('fairseq')}, sacrebleu "
            f"{m.get('sacrebleu')}; {m.get('threads_per_run')} thread per run, {m.get('runs_at_a_time')} "
            f"runs at a time; load average at the stage's start {m.get('load_average_at_start')}; commit "
            f"{str(m.get('git_commit'))[:10]}{' (uncommitted changes)' if m.get('git_dirty') else ''}; "
            f"{m.get('date')}.")


def sweep_markdown(d: dict) -> str:
    """The sweep's table, from the dict the sweep stage saves (``mt_sweep.json``); its heading
    starts with ``d["title"]`` (default "Sweep") and ``d["intro"]``, a paragraph, follows it when
    given (``--title``, ``--intro``)."""
    s = d["settings"]
    lines = [f"# {d.get('title') or 'Sweep'}: Multi30k {s['pair']}, {s['updates']} updates per configuration "
             f"(seed {s['seed']})", "",
             *([d["intro"], ""] if d.get("intro") else []),
             *([f"Reproduce: `{s['command']}`.", ""] if s.get("command") else []),
             f"Score: {s['score']}. **Bold**: the best of each system in this file; the race takes its recipes "
             "from `mt_sweep.json`.", "",
             _machine_line(d["machine"]), "",
             "| system | lr | warm-up | LayerScale init / norm | valid sacreBLEU | updates | training min | "
             "last valid loss |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for row in sorted(d["rows"], key=lambda r: (r["system"], -r["valid_sacrebleu"])):
        rec = row["recipe"]
        tail = f"{rec['layerscale_init']:g}" if row["system"] == "resmlp" else f"{rec['norm']}-norm"
        bleu = f"**{row['valid_sacrebleu']:.2f}** (best)" if row["best"] else f"{row['valid_sacrebleu']:.2f}"
        loss = f"{row['last_valid_loss']:.3f}" if row["last_valid_loss"] is not None else "-"
        minutes = f"{row['train_minutes']:.1f}" + (" (resumed part)" if row.get("resumed") else "")
        cells = [row["system"], fmt_lr(rec["lr"]), str(rec["warmup"]), tail, bleu, str(row["updates"]), minutes, loss]
        if not row.get("in_grid", True):
            cells = [f"*{c}*" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if d["rows"]:
        lines += ["", f"sacreBLEU signature: `{d['rows'][0]['signature']}`"]
    lines += ["",
              "Training minutes are wall-clock time on a shared "
              "machine, not a speed comparison (the race measures that)."]
    lines += [f"\n{note}" for note in d.get("notes", [])]
    return "\n".join(lines) + "\n"


def race_markdown(d: dict) -> str:
    s = d["settings"]
    lines = [f"# Race: {s['minutes']:g} minutes of training per run, {s['seeds']} seed(s), one thread per run", "",
             f"Recipes ({s['recipe_source']}): " + "; ".join(f"{k}: {recipe_text(k, v)}"
                                                             for k, v in s["recipes"].items()) + ".",
             f"Budget: {s['budget']}; scored: {s['checkpoint']}, beam 4.", "", _machine_line(d["machine"]), ""]
    lines += trained_on_lines(d["runs"], d["machine"], unit="run")
    lines += ["| pair | system | updates | test sacreBLEU per seed | test mean ± std | valid sacreBLEU per seed | "
              "valid mean ± std |",
              "|---|---|---:|---|---:|---|---:|"]
    for pair, ps in d["summary"].items():
        for system in SYSTEMS:
            p = ps[system]
            lines.append(f"| {pair} | {system} | {p['updates']['mean']:.0f} | "
                         f"{', '.join(f'{v:.2f}' for v in p['test']['values'])} | {pm(p['test'])} | "
                         f"{', '.join(f'{v:.2f}' for v in p['valid']['values'])} | {pm(p['valid'])} |")
        diff = ps["resmlp_minus_transformer"]
        lines.append(f"| {pair} | **ResMLP − Transformer** (paired by seed) | | "
                     f"{', '.join(f'{v:+.2f}' for v in diff['test']['values'])} | **{diff['test']['mean']:+.2f}** | "
                     f"{', '.join(f'{v:+.2f}' for v in diff['valid']['values'])} | **{diff['valid']['mean']:+.2f}** |")
    sig = next((r["eval"]["test"]["sacrebleu_signature"] for r in d["runs"]), None)
    if sig:
        lines += ["", f"sacreBLEU signature: `{sig}`"]
    return "\n".join(lines) + "\n"


def reported_model(entry: dict) -> str:
    """The model a curve run is reported by: ``"averaged"`` (the last checkpoints averaged) for a
    run that early-stopped at a plateau, else ``"last"``: a run stopped by its minutes budget is
    still rising, and averaging its last checkpoints would mix in early, weaker models (results
    written before this rule carry an ``averaged`` entry for such runs too; it is ignored)."""
    return "averaged" if entry.get("converged") and "averaged" in entry["eval"] else "last"


def compared_model(systems: dict) -> str:
    """The model both systems of a pair are compared by: ``"averaged"`` if each is reported by
    its average, else ``"last"`` for both (a like-for-like difference)."""
    return "averaged" if all(reported_model(systems[x]) == "averaged" for x in SYSTEMS) else "last"


MODEL_NAMES = {"averaged": "average of the last checkpoints", "last": "last checkpoint"}


def curves_markdown(d: dict) -> str:
    s = d["settings"]
    lines = ["# Validation BLEU against training time", "",
             f"Recipes ({s['recipe_source']}): " + "; ".join(f"{k}: {recipe_text(k, v)}"
                                                             for k, v in s["recipes"].items()) + ".",
             f"Method: {s['method']}. " +
             "; ".join(f"{p}: at most {m:g} training "
                       f"minutes{', early stopping' if s['early_stopping'][p] else ', no early stopping'}"
                       for p, m in s["max_training_minutes"].items()) + ".", "", _machine_line(d["machine"]), ""]
    lines += trained_on_lines([p for systems in d["pairs"].values() for e in systems.values() for p in e["points"]],
                              d["machine"])
    lines += ["| pair | system | stopped because | updates | training min | best valid BLEU (@ updates) | "
              "best-BLEU ckpt test | last ckpt test / valid | average of last N (plateau only): test / valid |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for pair, systems in d["pairs"].items():
        for system in SYSTEMS:
            if system not in systems:
                continue
            e = systems[system]
            ev = e["eval"]
            bp = e["best_point"]
            last = f"{ev['last']['test']['sacrebleu']:.2f} / {ev['last']['valid']['sacrebleu']:.2f}"
            if reported_model(e) == "averaged":
                averaged = (f"**{ev['averaged']['test']['sacrebleu']:.2f} / "
                            f"{ev['averaged']['valid']['sacrebleu']:.2f}** (N={len(e['averaged_checkpoints'])})")
            else:
                last, averaged = f"**{last}**", "— (no plateau: last checkpoint reported)"
            lines.append(
                f"| {pair} | {system} | {e['stop_reason']} | {e['updates']} | {e['train_minutes']:.1f} | "
                f"{bp['valid_bleu']:.2f} (@ {bp['updates']}) | {ev['best']['test']['sacrebleu']:.2f} | {last} | "
                f"{averaged} |")
        if all(x in systems for x in SYSTEMS):
            model = compared_model(systems)
            r, t = systems["resmlp"]["eval"][model], systems["transformer"]["eval"][model]
            diff = (f"**{r['test']['sacrebleu'] - t['test']['sacrebleu']:+.2f} / "
                    f"{r['valid']['sacrebleu'] - t['valid']['sacrebleu']:+.2f}**")
            lines.append(f"| {pair} | **ResMLP − Transformer** | | | | | | "
                         + (f"| {diff} |" if model == "averaged" else f"{diff} | |"))
    lines += ["", "Points (updates, training minutes, valid sacreBLEU):", ""]
    for pair, systems in d["pairs"].items():
        for system, e in systems.items():
            lines.append(f"- {pair} {system}: "
                         + ", ".join(f"{p['updates']} / {p['train_minutes']:.1f} / {p['valid_bleu']:.2f}"
                                                           for p in e["points"]))
    lines += ["", "Plots: " + ", ".join(f"`mt_curves_{p}.png`" for p in d["pairs"]) + " (all pairs: `mt_curves.png`)."]
    return "\n".join(lines) + "\n"


def style_bleu_axes(ax, pair: str, xlabel: str) -> None:
    """The look of every valid-sacreBLEU curve panel of the translation studies."""
    ax.set_title(f"Multi30k {pair}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("valid sacreBLEU (beam 4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_curves(d: dict, out_dir: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(axes_row, pair):
        for system, style in zip(SYSTEMS, ("-o", "--s")):
            e = d["pairs"][pair].get(system)
            if not e:
                continue
            pts = e["points"]
            model = reported_model(e)
            score = e["eval"][model]["valid"]["sacrebleu"]
            label = (f"{system} (average of last {len(e['averaged_checkpoints'])}: valid {score:.2f})"
                     if model == "averaged"
                     else f"{system} (last checkpoint: valid {score:.2f})")
            axes_row[0].plot([p["train_minutes"] for p in pts], [p["valid_bleu"] for p in pts], style, ms=3,
                             label=label)
            axes_row[1].plot([p["updates"] for p in pts], [p["valid_bleu"] for p in pts], style, ms=3, label=label)
        for ax, xlabel in zip(axes_row, ("training minutes (evaluation and checkpointing excluded)", "updates")):
            style_bleu_axes(ax, pair, xlabel)

    written = []
    pairs = list(d["pairs"])
    for pair in pairs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
        draw(axes[0], pair)
        fig.tight_layout()
        path = out_dir / f"mt_curves_{pair}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if pairs:
        fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 4 * len(pairs)), squeeze=False)
        for row, pair in zip(axes, pairs):
            draw(row, pair)
        fig.tight_layout()
        fig.savefig(out_dir / "mt_curves.png", dpi=110)
        plt.close(fig)
        written.append(out_dir / "mt_curves.png")
    return written


def assess_goals(race: Optional[dict], curves: Optional[dict]) -> List[dict]:
    goals = []
    # goal 1: the race
    g = {"goal": GOAL_RACE, "status": "not run", "figures": [], "caveats": []}
    if race is not None:
        s = race["settings"]
        ok = True
        for pair in PAIRS:
            if pair not in race["summary"]:
                ok = False
                g["caveats"].append(f"{pair} was not raced")
                continue
            ps = race["summary"][pair]
            for split in SPLITS:
                r, t = ps["resmlp"][split]["mean"], ps["transformer"][split]["mean"]
                diff = r - t
                met = diff >= 1.0 - 1e-9
                ok &= met
                g["figures"].append({"pair": pair, "split": split, "resmlp": r, "transformer": t,
                                     "difference": round(diff, 3), "needed": 1.0, "met": met,
                                     "resmlp_std": ps["resmlp"][split]["std"],
                                     "transformer_std": ps["transformer"][split]["std"]})
        g["status"] = "met" if ok else "missed"
        if s["minutes"] != 25:
            g["caveats"].append(f"raced at {s['minutes']:g} minutes, not 25")
        if s["seeds"] != 3:
            g["caveats"].append(f"{s['seeds']} seed(s), not 3")
        if "default recipe" in s["recipe_source"]:
            g["caveats"].append("the Transformer was not tuned (no sweep)")
        if s.get("quick"):
            g["caveats"].append("--quick smoke-test run: the figures say nothing about the goal")
    goals.append(g)
    # goal 2: convergence
    g = {"goal": GOAL_CONVERGENCE, "status": "not run", "figures": [], "caveats": []}
    if curves is not None and "en-de" in curves["pairs"] and all(s in curves["pairs"]["en-de"] for s in SYSTEMS):
        e = curves["pairs"]["en-de"]
        ok = True
        model = compared_model(e)
        for split in SPLITS:
            r, t = e["resmlp"]["eval"][model][split]["sacrebleu"], e["transformer"]["eval"][model][split]["sacrebleu"]
            diff = r - t
            met = diff >= -0.5 - 1e-9
            ok &= met
            g["figures"].append({"pair": "en-de", "split": split, "model": MODEL_NAMES[model], "resmlp": r,
                                 "transformer": t, "difference": round(diff, 3), "needed": -0.5, "met": met})
        g["status"] = "met" if ok else "missed"
        for system in SYSTEMS:
            if not e[system]["converged"]:
                g["caveats"].append(f"{system} did not early-stop ({e[system]['stop_reason']}): "
                                    "not necessarily converged")
        if "default recipe" in curves["settings"]["recipe_source"]:
            g["caveats"].append("the Transformer was not tuned (no sweep)")
        if curves["settings"].get("quick"):
            g["caveats"].append("--quick smoke-test run: the figures say nothing about the goal")
    goals.append(g)
    return goals


def report_markdown(out: dict, loaded: dict) -> str:
    lines = ["# Translation race: ResMLP against a tuned Transformer of the same size (Multi30k)", "",
             "Rebuilt by `python -m benchmarks.race_mt --stage report` from " +
             ", ".join(f"`{Path(p).name}`" for p in out["sources"].values() if p) + ".", "", "## Goals", ""]
    for g in out["goals"]:
        lines.append(f"- **{g['status'].upper()}**: {g['goal']}.")
        for f in g["figures"]:
            extra = f" ({f['model']})" if "model" in f else ""
            lines.append(f"  - {f['pair']} {f['split']}{extra}: ResMLP {f['resmlp']:.2f}, "
                         f"Transformer {f['transformer']:.2f}: difference {f['difference']:+.2f} "
                         f"(needed {f['needed']:+.1f}): {'met' if f['met'] else 'missed'}")
        for c in g["caveats"]:
            lines.append(f"  - caveat: {c}")
    for name, title in (("mt_race", "Race"), ("mt_curves", "Curves"), ("mt_sweep", "Sweep")):
        if loaded.get(name) is not None:
            body = {"mt_sweep": sweep_markdown, "mt_race": race_markdown,
                    "mt_curves": curves_markdown}[name](loaded[name])
            lines += ["", f"## {title}", "", *body.splitlines()[2:]]
    return "\n".join(lines).rstrip() + "\n"


# --- command line -----------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    p.add_argument("--work-dir", type=cli_path, default=REPO / "checkpoints" / "race",
                   help="runs and their cached results")
    p.add_argument("--results-dir", type=cli_path, default=REPO / "results",
                   help="where the JSON, markdown and PNG files go")
    p.add_argument("--data-root", type=cli_path, default=REPO / "data-bin",
                   help="holds multi30k.en-de and multi30k.en-fr")
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS), help="pairs of the race and the curves")
    p.add_argument("--sweep-updates", type=int, default=None, help="updates per sweep run (default 600; --quick 4)")
    p.add_argument("--sweep-lrs", type=float, nargs="+", default=list(SWEEP_LRS), help="sweep: peak learning rates")
    p.add_argument("--sweep-warmups", type=int, nargs="+", default=list(SWEEP_WARMUPS), help="sweep: warm-up updates")
    p.add_argument("--title", default=None,
                   help="sweep: the heading of mt_sweep.md (default \"Sweep\"), e.g. for a sweep published beside "
                        "the race's; kept in mt_sweep.json")
    p.add_argument("--intro", default=None, help="sweep: a paragraph under the heading; kept in mt_sweep.json")
    p.add_argument("--minutes", type=float, default=None,
                   help="race budget per run, wall-clock (default 25; --quick 0.2)")
    p.add_argument("--seeds", type=int, default=None, help="race seeds (default 3; --quick 1)")
    p.add_argument("--max-minutes", type=training_minutes, default=None,
                   help="curves, En-De: most training minutes if early "
                        "stopping has not stopped it (default 120; --quick 0.3)")
    p.add_argument("--fr-minutes", type=training_minutes, default=None,
                   help="curves, En-Fr: training minutes (default 25; --quick 0.3)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="curves: updates between validations (default 250; --quick 100)")
    p.add_argument("--parallel", type=int, default=2, help="runs side by side")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (training and evaluation)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint of the sweep and race runs")
    p.add_argument("--progress-seconds", type=float, default=60.0,
                   help="at most one progress message per run this often")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets (for tests, on tiny prepared data)")
    p.add_argument("--extra-train-args", default="", help=argparse.SUPPRESS)  # testing: e.g. a tiny model
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (("sweep_updates", 600, 4), ("minutes", 25.0, 0.2), ("seeds", 3, 1),
                              ("max_minutes", 120.0, 0.3), ("fr_minutes", 25.0, 0.3), ("eval_every", 250, 100)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.parallel < 1 or args.threads < 1 or args.seeds < 1:
        p.error("--parallel, --threads and --seeds must be at least 1")
    args.command = " ".join([Path(sys.executable).name,
                             *(sys.argv if argv is None else ["python -m benchmarks.race_mt", *argv])])
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    logging.getLogger("mt_tools.evaluate").setLevel(logging.WARNING)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stop_trainings_on_sigterm()
    race = Race(args)
    stages = STAGES if args.stage == "all" else (args.stage,)
    if args.stage == "all":
        est = (math.ceil(len(sweep_grid(quick, args.sweep_lrs, args.sweep_warmups)["resmlp"]) * 2 / args.parallel)
               * (args.sweep_updates * 1.5 / 60 + 1.5)
               + math.ceil(len(args.pairs) * args.seeds * 2 / args.parallel) * (args.minutes + 3)
               + (args.max_minutes * 1.2 + 6) + ("en-fr" in args.pairs) * (args.fr_minutes * 1.2 + 6))
        log.info("all stages: sweep, race, curves, report; at most about %s without cached runs", minutes_text(est))
    start = time.time()
    for stage in stages:
        log.info("=== stage %s ===", stage)
        race._info = None  # machine state (load, date) recorded per stage
        getattr(race, stage)()
    log.info("done in %s", minutes_text((time.time() - start) / 60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
