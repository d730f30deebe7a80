#!/usr/bin/env python
"""The token-mixer study: which change to ResMLP's token mixer closes its gap to the tuned
Transformer on Multi30k, with the translation race's harness and the same effort per system.

    .venv/bin/python -m benchmarks.mt_token_mixers --stage screen            # En-De then En-Fr
    .venv/bin/python -m benchmarks.mt_token_mixers --stage screen --pairs en-de --variants paper heads16

``screen`` (the default): every variant of :data:`VARIANTS` (``resmlp_mt_small`` with one or a few
``--token-mixer-*`` flags, ResMLP's tuned recipe) and the tuned Transformer, ``--updates``
updates each (600, the sweep's budget), seed 1, scored by sacreBLEU of the last checkpoint on
the valid split (beam 4). Rows: valid sacreBLEU, its difference to the paper's mixer and to the
Transformer of the same pair, parameters, training words/s. Writes
results/mt_token_mixers_screen.{json,md}.

``race``: ``--race-variants`` (default: the paper's mixer and ``relative_glu``, the screen's best on
En-De) against the Transformer for ``--minutes`` (25) of wall-clock training, ``--seeds`` (3) seeds,
both pairs: test and valid sacreBLEU, updates, updates per minute, training words/s, parameters.
Writes results/mt_token_mixers_race.{json,md}. ``--layers 3 1`` races every system at that depth
(runs named ``en-de.transformer.layers3+1.seed1``), as the curves below. ``--report-only`` trains
nothing and reports the runs finished so far (a race spread over sessions, or trained one pair or
seed at a time with ``--pairs``/``--seeds`` and a scratch ``--output``): the others are listed as not
finished and the goal is not decided until every run has finished. Finished runs are cached in
``<work-dir>`` only: a new machine trains the race again.

``curves``: ``--curve-variants`` (default: the paper's mixer and ``relative_glu``) and the
Transformer to convergence, each at every dropout of ``--dropouts`` (0.1 0.2 0.3: Multi30k is
small; ``--dropout`` comes after scripts/train_multi30k.sh's own 0.1 and overrides it), seed 1,
``--pairs``, by the race's curve rule (:meth:`benchmarks.race_mt.Race.curve_run`: segments of
``--eval-every`` (250) updates with valid sacreBLEU after each, early stopping after ``--patience``
(3) evaluations without improvement or at ``--max-minutes`` (150) of training; then the best, the
last and, on a plateau, the averaged last 5 checkpoints scored on test and valid). Rows per
run; each system's dropout chosen by the VALID sacreBLEU of its reported model (averaged on a
plateau, else the last checkpoint; never by test); each variant minus the Transformer at their
chosen dropouts, by the same model of both. Runs in the order that reaches the verdict first: the
variants beside the Transformer at each dropout, En-De then En-Fr, then the paper's mixer, the
reference (:meth:`TokenMixerStudy.curve_plan`). Writes
results/mt_token_mixers_curves.{json,md,png} (the JSON keeps every run's points). ``--layers 6 1``
gives every system, the Transformer too, 6 encoder and 1 decoder layers (runs named
``en-de.transformer.layers6+1.dropout0.2``), for deep-encoder shallow-decoder models compared at
equal depth. ``--patience 6`` is the same study with a longer early-stopping patience, for every
system alike (runs named ``en-fr.transformer.layers3+1.dropout0.2.patience6``; a run with patience 3
in ``<work-dir>`` is copied and goes on from where it stopped, so the longer rule costs only the
extra segments); give it its own ``--output``, and a larger ``--max-minutes`` if runs near the cap.

    .venv/bin/python -m benchmarks.mt_token_mixers --stage curves                # the full study
    .venv/bin/python -m benchmarks.mt_token_mixers --stage curves --report-only  # the runs finished so far
    .venv/bin/python -m benchmarks.mt_token_mixers --stage curves --max-runs 2   # the next two runs, then report
    .venv/bin/python -m benchmarks.mt_token_mixers --stage curves --train-only transformer  # one system's runs

Cost: a run early-stops after about 3,500 updates, 110-145 minutes with its evaluations beside
another run; 3 systems x 3 dropouts x 2 pairs = 18 runs, two at a time (each starts as soon as a
core frees up): about 18 hours. Resumable: finished runs are cached, an interrupted one resumes
after its last evaluated segment. The stage reports when every run has finished; between sessions of a study
spread over several, ``--report-only`` (with the stage's settings) trains nothing and reports the
runs finished so far, listing the others as not finished (each system's dropout is then chosen
among its finished ones). The published page is the study's record across machines: a run on
results/mt_token_mixers_curves.json whose settings (:meth:`TokenMixerStudy.portable_spec`) equal
the plan's is carried over, not trained again, when its run folder is absent (a new machine keeps
the repository, not ``<work-dir>``); its row keeps the machine it trained on. ``--carry-from PAGE``
carries the runs of other pages the same way, for example the Transformer of the main curves for a
new variant's page (``--output``).

Same conditions as the race (:mod:`benchmarks.race_mt`): scripts/train_multi30k.sh, one thread
per run, ``--parallel`` runs side by side, finished runs cached in ``<work-dir>`` with the
settings that produced them (a rerun skips them; an interrupted run resumes from its last
checkpoint). The paper's mixer and the Transformer at their sweep recipes on En-De are the
sweep's own runs (``<work-dir>/sweep``): reused when the sweep already made them. Update budgets,
not minutes, so a run's figures do not depend on the machine's load (its minutes and words/s do).
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
from benchmarks.race_mt import (  # noqa: E402
    AVERAGE_LAST, MODEL_NAMES, PAIRS, PATIENCE, SEGMENT_ARGS, Job, Race, _machine_line, best_point,
    compared_model, continue_run, mean_std, minutes_text, pm, read_json, reported_model, run_grew,
    stop_trainings_on_sigterm, style_bleu_axes, trained_on_lines,
)
from benchmarks.common import cli_path, drop_options, repo_relative, training_minutes  # noqa: E402
from mt_tools.recipes import fmt_lr, recipe_name, recipe_text  # noqa: E402
from resmlp_core.io import write_atomic  # noqa: E402

log = logging.getLogger("mt_token_mixers")

#: name -> (what it is, fairseq-train flags). ``paper`` is the paper's mixer (no flag).
VARIANTS: Dict[str, tuple] = {
    "paper": ("the paper's: one matrix A over absolute positions", []),
    "heads16": ("16 matrices, one per group of 16 channels (Synthesizer Random's heads)",
                ["--token-mixer-heads", "16"]),
    "relative": ("A[t, s] = w[t - s] (Toeplitz, one kernel over offsets)", ["--token-mixer-positions", "relative"]),
    "softmax": ("each row softmax-normalised over the positions it may read", ["--token-mixer-normalize", "softmax"]),
    "glu": ("GLU input projection before mixing (LightConv's)", ["--token-mixer-gate", "glu"]),
    "sgu": ("gMLP's spatial gating unit, u * mix(LayerNorm(v))", ["--token-mixer-gate", "sgu"]),
    "synthesizer": ("16 heads + softmax rows (Synthesizer Random)",
                    ["--token-mixer-heads", "16", "--token-mixer-normalize", "softmax"]),
    "lightconv": ("16 heads, relative, band of 15, softmax, GLU (LightConv's mixer)",
                  ["--token-mixer-heads", "16", "--token-mixer-positions", "relative", "--token-mixer-kernel", "15",
                   "--token-mixer-normalize", "softmax", "--token-mixer-gate", "glu"]),
    "relative_band15": ("relative, band of 15 offsets (abs(t - s) < 15; decoding keeps 14 inputs)",
                        ["--token-mixer-positions", "relative", "--token-mixer-kernel", "15"]),
    "relative_glu": ("relative + GLU input projection",
                     ["--token-mixer-positions", "relative", "--token-mixer-gate", "glu"]),
    "relative_band15_glu": ("relative, band of 15 offsets, GLU input projection",
                            ["--token-mixer-positions", "relative", "--token-mixer-kernel", "15",
                             "--token-mixer-gate", "glu"]),
    "relative_glu_dynamic": ("relative + GLU + a kernel predicted from each position's input (DynamicConv's)",
                             ["--token-mixer-positions", "relative", "--token-mixer-gate", "glu",
                              "--token-mixer-weights", "dynamic"]),
    "relative_glu_dynamic_heads4": ("relative + GLU + dynamic kernels, 4 heads (the Transformer's)",
                                    ["--token-mixer-positions", "relative", "--token-mixer-gate", "glu",
                                     "--token-mixer-weights", "dynamic", "--token-mixer-heads", "4"]),
    "dynamicconv": ("16 heads, relative, band of 15, softmax, GLU, dynamic kernels (DynamicConv's mixer)",
                    ["--token-mixer-heads", "16", "--token-mixer-positions", "relative", "--token-mixer-kernel", "15",
                     "--token-mixer-normalize", "softmax", "--token-mixer-gate", "glu", "--token-mixer-weights",
                     "dynamic"]),
    "hybrid1": ("NOT attention-free: the paper's mixer + one self-attention head per encoder layer (upper reference)",
                ["--hybrid-encoder-attention-heads", "1"]),
}
TRANSFORMER = "transformer"
#: the sweeps' best recipes (results/mt_sweep.json, results/mt_sweep_wide_lr.json)
RESMLP_RECIPE = {"lr": 4e-3, "warmup": 300, "layerscale_init": 0.5}
TRANSFORMER_RECIPE = {"lr": 2e-3, "warmup": 300, "norm": "pre"}
PARAMS = re.compile(r"num\. (?:shared )?model params: ([\d,]+)")
#: a curve run on Multi30k early-stops after 3,500 to 6,000 updates: 110 to 145 minutes with its
#: evaluations, beside another run on the reference machine (the ETA before any run has finished)
CURVE_RUN_MINUTES = 120.0


def parameters(run_dir: Path):
    """The model's parameter count from fairseq-train's log in ``run_dir`` (None if absent): the
    log of a run (train.log, train_resumed.log) or of any segment of a curve run (train.NNNNNNN.log)."""
    for path in sorted(run_dir.glob("train*.log")):
        try:
            m = PARAMS.search(path.read_text(errors="replace"))
        except OSError:
            continue
        if m:
            return int(m.group(1).replace(",", ""))
    return None


def layers_flags(layers: Optional[List[int]]) -> List[str]:
    """fairseq-train flags of ``--layers ENCODER DECODER`` (none: each system's own, 3 + 3)."""
    return ["--encoder-layers", str(layers[0]), "--decoder-layers", str(layers[1])] if layers else []


def depth_suffix(layers: Optional[List[int]]) -> str:
    """What a run's name says of ``--layers`` (nothing for the systems' own depth): ``.layers6+1``."""
    return f".layers{layers[0]}+{layers[1]}" if layers else ""


def system_recipe_flags(variant: str, lr: float) -> tuple:
    """``(system, recipe, fairseq-train flags)`` of a variant (or the Transformer): ResMLP's tuned
    recipe at peak learning rate ``lr`` with the variant's flags, or the Transformer's own recipe."""
    if variant == TRANSFORMER:
        return TRANSFORMER, dict(TRANSFORMER_RECIPE), []
    return "resmlp", dict(RESMLP_RECIPE, lr=lr), list(VARIANTS[variant][1])


class TokenMixerStudy(Race):
    def job(self, variant: str, pair: str, updates: int, lr: float) -> Job:
        """One screen run; the paper's mixer and the Transformer at the sweep's settings on En-De
        are the sweep's jobs (same name, stage and flags: its cached runs count)."""
        system, recipe, flags = system_recipe_flags(variant, lr)
        train_args = ["--save-interval-updates", str(updates), "--keep-interval-updates", "1"]
        estimate = updates * 1.5 / 60 + 1.5
        if variant in ("paper", TRANSFORMER) and pair == "en-de":
            name = recipe_name(system, recipe)
            return Job("sweep", name, system, pair, 1, recipe, label=f"{pair} {variant}", max_update=updates,
                       train_args=train_args, estimate_minutes=estimate)
        name = f"{pair}.{variant}.lr{fmt_lr(recipe['lr'])}"
        return Job("token_mixers", name, system, pair, 1, recipe, label=f"{pair} {variant} lr {fmt_lr(recipe['lr'])}",
                   max_update=updates, train_args=train_args + flags, estimate_minutes=estimate)

    def screen(self) -> dict:
        a = self.args
        self.check_data(a.pairs)
        planned = [(v, self.job(v, pair, a.updates, lr)) for pair in a.pairs for lr in a.lrs for v in a.variants
                   if not (v == TRANSFORMER and lr != a.lrs[0])]  # the Transformer at its own recipe, once
        results = self.run_jobs("screen", [[j] for _, j in planned], self.score_valid)
        rows = []
        for (variant, job), r in zip(planned, results):
            transformer = variant == TRANSFORMER
            rows.append({"pair": job.pair, "variant": variant,
                         "what": "pre-norm Transformer of the same size" if transformer else VARIANTS[variant][0],
                         "flags": "" if transformer else " ".join(VARIANTS[variant][1]), "recipe": job.recipe,
                         "recipe_text": recipe_text(job.system, job.recipe),
                         "valid_sacrebleu": r["valid"]["sacrebleu"], "updates": r["figures"]["updates"],
                         "parameters": parameters(self.run_dir(job)),
                         "words_per_second": r["figures"].get("words_per_second"),
                         "train_minutes": r["figures"]["train_minutes"], "signature": r["valid"]["sacrebleu_signature"],
                         "run": job.key})
        for row in rows:
            lr = a.lrs[0] if row["variant"] == TRANSFORMER else row["recipe"]["lr"]  # the paper's row at the same lr
            peers = {p["variant"]: p["valid_sacrebleu"] for p in rows if p["pair"] == row["pair"]
                     and (p["variant"] == TRANSFORMER or p["recipe"]["lr"] == lr)}
            row["vs_paper"] = round(row["valid_sacrebleu"] - peers["paper"], 2) if "paper" in peers else None
            row["vs_transformer"] = (round(row["valid_sacrebleu"] - peers[TRANSFORMER], 2) if TRANSFORMER in peers
                                     else None)
        out = {"settings": {"pairs": a.pairs, "updates": a.updates, "seed": 1, "lrs": a.lrs, "variants": a.variants,
                            "resmlp_recipe": RESMLP_RECIPE, "transformer_recipe": TRANSFORMER_RECIPE,
                            "score": "sacreBLEU of checkpoint_last.pt on the valid split, beam 4 (mt_tools.evaluate)",
                            "command": a.command},
               "machine": self.record_machine(), "rows": rows}
        self.publish(a.output, out, screen_markdown(out))
        return out

    def race(self) -> dict:
        """Each of ``--race-variants`` (the paper's mixer, the screen's best, ...) and the Transformer
        at their recipes for ``--minutes`` of wall-clock training, ``--seeds`` seeds, both pairs;
        test and valid sacreBLEU of the last checkpoint, training words/s and updates per minute.
        Runs go ``--parallel`` at a time in this order (a seed's runs together where they fit; with three
        systems on two places a seed's third run shares its group with the next one's first), so every
        run trains beside another one and sees the same load. With ``--report-only`` nothing trains:
        the report covers the runs already finished (cached with the same settings), lists the others
        as not finished, and leaves the goal undecided until every run has finished."""
        a = self.args
        systems = self.race_systems()
        plan = self.race_plan()
        jobs = [job for slot in plan for job in slot]
        if a.report_only:
            results = [r for r in map(self.cached, jobs) if r is not None]
        else:
            self.check_data(a.pairs)
            results = self.run_jobs("race", plan, self.score_test_valid)
        finished = {r["name"] for r in results}
        not_finished = [job.name for job in jobs if job.name not in finished]
        runs = []
        for r in results:
            variant = r["name"].split(".")[1]
            f = r["figures"]
            runs.append({"pair": r["pair"], "variant": variant, "seed": r["seed"], "updates": f["updates"],
                         "wall_minutes": f["wall_minutes"], "words_per_second": f.get("words_per_second"),
                         "updates_per_minute": round(f["updates"] / f["train_minutes"], 1)
                         if f.get("train_minutes") else None,
                         "parameters": parameters(self.work / r["stage"] / r["name"]),
                         "sacrebleu": {split: r["eval"][split]["sacrebleu"] for split in ("test", "valid")},
                         "trained_by": r.get("trained_by")})
        summary = {}
        for pair in a.pairs:
            summary[pair] = {}
            for v in systems:
                mine = [r for r in runs if r["pair"] == pair and r["variant"] == v]
                summary[pair][v] = {split: mean_std([r["sacrebleu"][split] for r in mine])
                                    for split in ("test", "valid")}
                for key in ("updates", "words_per_second", "updates_per_minute"):
                    summary[pair][v][key] = mean_std([r[key] for r in mine if r[key] is not None])
                summary[pair][v]["parameters"] = mine[0]["parameters"] if mine else None
        out = {"settings": {"pairs": a.pairs, "minutes": a.minutes, "seeds": a.seeds, "variants": systems,
                            "layers": a.layers, "planned": [job.name for job in jobs], "not_finished": not_finished,
                            "resmlp_recipe": dict(RESMLP_RECIPE, lr=a.lrs[0]), "transformer_recipe": TRANSFORMER_RECIPE,
                            "score": "sacreBLEU of checkpoint_last.pt, beam 4 (mt_tools.evaluate)",
                            "command": a.command},
               "machine": self.record_machine(), "runs": runs, "summary": summary}
        self.publish(self.stem("race"), out, race_markdown(out))
        return out

    def race_systems(self) -> List[str]:
        """The race's systems, in the order of its runs and tables: ``--race-variants``, then the Transformer."""
        return [*self.args.race_variants, TRANSFORMER]

    def race_plan(self) -> List[List[Job]]:
        """The race's runs, one group per pair and seed: each of ``--race-variants`` and the
        Transformer at their recipes for ``--minutes``, with ``--layers``' depth where given (named
        ``en-de.transformer.layers3+1.seed1``: runs of the systems' own depth are never taken for them)."""
        a = self.args
        slots = []
        for pair in a.pairs:
            for seed in range(1, a.seeds + 1):
                slot = []
                for v in self.race_systems():
                    system, recipe, flags = system_recipe_flags(v, a.lrs[0])
                    name = f"{v}{depth_suffix(a.layers)}"
                    slot.append(Job("token_mixers_race", f"{pair}.{name}.seed{seed}", system, pair, seed, recipe,
                                    label=f"{pair} {name} seed {seed}", minutes=a.minutes,
                                    train_args=[*flags, *layers_flags(a.layers)], estimate_minutes=a.minutes + 3))
                slots.append(slot)
        return slots

    def curve_plan(self) -> List[List[tuple]]:
        """The curves' runs as slots of ``(variant, dropout, job)``, in the order that reaches the
        study's verdict first: the variants other than the paper's beside the Transformer (one slot per
        pair and dropout: En-De's dropouts, then En-Fr's), then the paper's mixer, the reference, at
        every dropout (one slot per pair). Early-stopping runs queue in this order
        (:meth:`~benchmarks.race_mt.Race.run_jobs`): each starts when a core frees up, so a variant
        and the Transformer at one dropout start together."""
        a = self.args
        first = [v for v in a.curve_variants if v != "paper"]
        pairs = [p for p in PAIRS if p in a.pairs]
        beside = [[self.curve_job(v, pair, d) for v in (*first, TRANSFORMER)] for pair in pairs for d in a.dropouts]
        paper = ([[self.curve_job("paper", pair, d) for d in a.dropouts] for pair in pairs]
                 if "paper" in a.curve_variants else [])
        return beside + paper

    def curve_job(self, variant: str, pair: str, dropout: float, patience: Optional[int] = None) -> tuple:
        """``(variant, dropout, job)``: one curve run (the race's curve rule: segments of ``--eval-every``
        updates, early stopping, ``--max-minutes``), seed ``--curve-seed``, at the study's recipe and
        ``--dropout`` (after scripts/train_multi30k.sh's own 0.1, so it overrides it). A seed other
        than 1 is in the run's name (``en-de.transformer.dropout0.2.seed2``), and so is a ``--patience``
        other than the rule's 3 (``en-de.transformer.dropout0.2.patience6``: :meth:`curves` starts it
        from the run with patience 3 when that one exists); ``patience`` (default ``--patience``)."""
        a = self.args
        system, recipe, flags = system_recipe_flags(variant, a.lrs[0])
        system_name = f"{variant}{depth_suffix(a.layers)}"
        patience = a.patience if patience is None else patience
        seeded = a.curve_seed != 1  # seed 1 keeps the published runs' names
        patient = patience != PATIENCE  # so does the rule's patience
        job = Job("token_mixers_curves", f"{pair}.{system_name}.dropout{dropout:g}"
                  + (f".seed{a.curve_seed}" if seeded else "") + (f".patience{patience}" if patient else ""),
                  system, pair, a.curve_seed, recipe,
                  label=f"{pair} {system_name} dropout {dropout:g}" + (f" seed {a.curve_seed}" if seeded else "")
                  + (f" patience {patience}" if patient else ""),
                  cap_minutes=a.max_minutes,
                  segment_updates=a.eval_every, early_stop=True, patience=patience,
                  train_args=[*SEGMENT_ARGS, *flags, *layers_flags(a.layers), "--dropout", f"{dropout:g}"],
                  estimate_minutes=min(CURVE_RUN_MINUTES, a.max_minutes * 1.3 + 6))
        return variant, dropout, job

    def curves(self) -> dict:
        """Each of ``--curve-variants`` and the Transformer at each of ``--dropouts`` to convergence
        (:meth:`Race.curve_run`), ``--parallel`` runs side by side in the order of :meth:`curve_plan`;
        then the report of the finished runs: every run's row and points, each system's dropout chosen
        by valid sacreBLEU, each variant's difference to the Transformer (:func:`curves_summary`).
        With ``--report-only`` nothing trains: the report covers the runs already finished (cached
        with the same settings), the others are listed as not finished."""
        a = self.args
        slots = self.curve_plan()
        plan = [run for slot in slots for run in slot]
        stem = self.stem("curves")
        self.check_page_keeps_its_runs(stem, [job for _, _, job in plan])
        local = {job.name: self.cached(job) for _, _, job in plan}  # finished here (read once)
        carried = self.published_curve_runs(stem, [job for _, _, job in plan])
        if not a.report_only:
            self.check_data(a.pairs)
            # what trains: the unfinished runs of --train-only's systems (default: all), the first
            # --max-runs of them; the runs finished here stay in the slots, to report
            systems = set(a.train_only or [*a.curve_variants, TRANSFORMER])
            unfinished = [job.name for variant, _, job in plan
                          if variant in systems and job.name not in carried and local[job.name] is None]
            train = set(unfinished[:a.max_runs])
            todo = [[job for _, _, job in slot if job.name not in carried
                     and (job.name in train or local[job.name] is not None)] for slot in slots]
            if a.train_only:
                log.info("[curves] --train-only %s: the other systems' runs are reported if finished, not trained",
                         " ".join(a.train_only))
            if a.max_runs is not None:
                log.info("[curves] --max-runs %d: training %s; left for later: %s", a.max_runs,
                         ", ".join(unfinished[:a.max_runs]) or "none", ", ".join(unfinished[a.max_runs:]) or "none")
            todo = [slot for slot in todo if slot]
            if a.patience != PATIENCE:
                self.continue_shorter_runs([run for run in plan if run[2].name in train])
            done = self.run_jobs("curves", todo, runner=self.curve_run) if todo else []
            local.update(zip((j.name for slot in todo for j in slot), done))
        runs = []
        for variant, dropout, job in plan:
            if local.get(job.name) is not None:
                runs.append(curve_row(variant, dropout, job, local[job.name], parameters(self.run_dir(job)),
                                      spec=self.portable_spec(job), machine=self.record_machine()))
            elif job.name in carried:
                runs.append(carried[job.name])
        out = {"settings": {"pairs": [p for p in PAIRS if p in a.pairs], "variants": [*a.curve_variants, TRANSFORMER],
                            "layers": a.layers, "dropouts": a.dropouts, "seed": a.curve_seed,
                            "eval_every": a.eval_every, "patience": a.patience,
                            "average_last": AVERAGE_LAST, "max_training_minutes": a.max_minutes,
                            "resmlp_recipe": dict(RESMLP_RECIPE, lr=a.lrs[0]), "transformer_recipe": TRANSFORMER_RECIPE,
                            "method": (f"training in segments of {a.eval_every} updates (fairseq-train --max-update, "
                                       "resumed from checkpoint_last.pt), valid sacreBLEU (mt_tools.evaluate, beam 4) "
                                       f"after each; early stopping after {a.patience} evaluations without improvement "
                                       f"or at {a.max_minutes:g} training minutes (validation, checkpoint writing and "
                                       "restarts left out)"),
                            "planned": [job.name for _, _, job in plan],
                            "not_finished": [job.name for _, _, job in plan
                                             if local[job.name] is None and job.name not in carried],
                            "in_progress": [progress for variant, dropout, job in plan
                                            if local[job.name] is None and job.name not in carried
                                            and (progress := self.curve_progress(variant, dropout, job))],
                            "plot": f"{stem}.png", "command": a.command},
               "machine": self.record_machine(), "runs": runs, **curves_summary(runs)}
        self.publish(stem, out, curves_markdown(out))
        if runs:
            plot_curves(out, self.results / f"{stem}.png")
        return out

    def curve_progress(self, variant: str, dropout: float, job: Job) -> Optional[dict]:
        """Where an unfinished curve run stands (None if it has evaluated no segment in
        ``<work-dir>`` with this plan's settings, or with settings that grow into them,
        :func:`~benchmarks.race_mt.run_grew`): its updates and training minutes so far, its best and
        last valid sacreBLEU (single checkpoints) and the evaluations since its best."""
        prog = read_json(self.run_dir(job) / "progress.json")
        spec = self.spec(job)
        if not prog or not prog["points"] or not (prog.get("spec") == spec or run_grew(prog.get("spec"), spec)):
            return None
        points = prog["points"]
        best, since = best_point(points)  # as the stopping rule reads them
        return {"run": job.name, "variant": variant, "dropout": dropout, "pair": job.pair,
                "updates": points[-1]["updates"], "train_minutes": points[-1]["train_minutes"],
                "best_valid": best["valid_bleu"], "best_updates": best["updates"],
                "last_valid": points[-1]["valid_bleu"], "since_best": since,
                "evaluated": points[-1].get("evaluated")}

    def check_page_keeps_its_runs(self, stem: str, jobs: List[Job]) -> None:
        """Refuse a plan that would drop runs from the curves page it rewrites: when
        ``<results-dir>/<stem>.json`` reports runs that are not among ``jobs`` (e.g. a ``--dropouts``
        of part of the page's grid), nothing trains and the error names them. A part of a page's
        plan trains with the whole plan and ``--train-only`` or ``--max-runs``; a plan of its own
        writes another page (``--output``)."""
        page = self.results / f"{stem}.json"
        planned = {job.key for job in jobs}
        dropped = [row["run"] for row in (read_json(page) or {}).get("runs", []) if row["run"] not in planned]
        if dropped:
            raise SystemExit(
                f"--output {self.args.output}: {page} reports {len(dropped)} run(s) this plan leaves out "
                f"({', '.join(Path(run).name for run in dropped)}), and rewriting it would drop them. Give the "
                "page's whole plan (the flags of its Reproduce line) and train a part of it with --train-only or "
                "--max-runs, or write another page with --output.")

    def continue_shorter_runs(self, runs: List[tuple]) -> None:
        """Each of ``runs`` (:meth:`curve_job`'s ``(variant, dropout, job)``, a ``--patience`` other
        than the rule's) not started yet begins as the continuation of the same run with the rule's
        patience when that one exists in ``<work-dir>`` (:func:`~benchmarks.race_mt.continue_run`:
        copied, so the published run stays as it is): it goes on from where that run stopped."""
        for variant, dropout, job in runs:
            shorter = self.curve_job(variant, job.pair, dropout, patience=PATIENCE)[2]
            copied = continue_run(self.run_dir(shorter), self.run_dir(job), self.spec(job))
            if copied:
                log.info("[curves] %s starts from %s (patience %d), which stopped after %d updates", job.name,
                         self.run_dir(shorter), PATIENCE, copied["points"][-1]["updates"])

    def portable_spec(self, job: Job) -> dict:
        """:meth:`~benchmarks.race_mt.Race.spec` with its paths relative to the repository
        (:func:`~benchmarks.common.repo_relative`, as results files write them): the settings a
        published row records, equal on any clone."""
        return repo_relative(self.spec(job))

    def published_curve_runs(self, stem: str, jobs: List[Job]) -> Dict[str, dict]:
        """``{job name: row}``: the rows of the published curves page (``<results-dir>/<stem>.json``,
        then the pages of ``--carry-from``) that are runs of ``jobs`` with their settings
        (:meth:`portable_spec`), carried over when a run has no finished result in ``<work-dir>``.
        A row with other settings is not carried (it is retrained), and the log says why."""
        rows = {}  # run -> (row, page): the stage's own page first, then each --carry-from page
        for path in (self.results / f"{stem}.json", *self.args.carry_from):
            for row in (read_json(path) or {}).get("runs", []):
                rows.setdefault(row["run"], (row, path))
        carried, sources = {}, {}
        for job in jobs:
            row, path = rows.get(job.key, (None, None))
            if row is None or self.cached(job) is not None:
                continue
            if row.get("spec") != self.portable_spec(job):
                log.warning("%s: the row published in %s has other settings than this plan's: not carried over",
                            job.name, path)
                continue
            carried[job.name] = row
            sources.setdefault(path, []).append(job.name)
        for path, names in sources.items():
            log.info("[curves] %d runs carried over from %s (trained on earlier machines): %s", len(names), path,
                     ", ".join(names))
        return carried

    def stem(self, stage: str) -> str:
        """The results file stem of a stage other than the screen: ``--output`` with ``_screen``
        replaced, e.g. mt_token_mixers_race."""
        return self.args.output.replace("_screen", "") + f"_{stage}"


def _signed(x) -> str:
    return "-" if x is None else f"{x:+.2f}"


def screen_markdown(d: dict) -> str:
    s = d["settings"]
    lines = [f"# Token-mixer screen: Multi30k, {s['updates']} updates per run (seed {s['seed']})", "",
             "Which change to ResMLP's token mixer helps it learn translation: each variant is `resmlp_mt_small` with "
             "the flags shown and ResMLP's tuned recipe; the Transformer (pre-norm, same depth, width, MLP and heads) "
             "trains with its own tuned recipe. A short screen, not the race: one seed, a fixed update budget.", "",
             f"Score: {s['score']}. ResMLP recipe: {recipe_text('resmlp', s['resmlp_recipe'])}; Transformer: "
             f"{recipe_text(TRANSFORMER, s['transformer_recipe'])}.", "",
             f"Reproduce: `{s['command']}`.", "", _machine_line(d["machine"]), ""]
    for pair in s["pairs"]:
        rows = sorted((r for r in d["rows"] if r["pair"] == pair), key=lambda r: -r["valid_sacrebleu"])
        if not rows:
            continue
        lines += [f"## {pair}", "",
                  "| variant | what | lr | valid sacreBLEU | vs paper | vs Transformer | parameters | train words/s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            wps = f"{r['words_per_second']:,.0f}" if r.get("words_per_second") else "-"
            params = f"{r['parameters']:,}" if r.get("parameters") else "-"
            lines.append(f"| {r['variant']} | {r['what']} | {fmt_lr(r['recipe']['lr'])} | {r['valid_sacrebleu']:.2f} | "
                         f"{_signed(r['vs_paper'])} | {_signed(r['vs_transformer'])} | {params} | {wps} |")
        lines.append("")
    if d["rows"]:
        lines += [f"sacreBLEU signature: `{d['rows'][0]['signature']}`", ""]
    lines += ["Words/s: fairseq's training throughput of each run, on a machine shared by two runs and other work: "
              "a rough guide, not the race's speed comparison."]
    return "\n".join(lines) + "\n"


def race_markdown(d: dict) -> str:
    s = d["settings"]
    seeds = f"{s['seeds']} seed{'s' if s['seeds'] != 1 else ''}"
    lines = [f"# Token-mixer race: {s['minutes']:g} minutes of training per run, {seeds}", "",
             "Each variant and the Transformer trained for the same wall-clock minutes, runs side by side at "
             "every moment (1 thread each)"
             + (f", every one with {s['layers'][0]} encoder and {s['layers'][1]} decoder layers"
                if s.get("layers") else "") + f"; {s['score']}; mean ± standard deviation over seeds.", "",
             f"Reproduce: `{s['command']}`.", "", _machine_line(d["machine"]), ""]
    lines += trained_on_lines(d["runs"], d["machine"], unit="run")
    not_finished = s.get("not_finished", [])
    if not_finished:
        lines += [f"Not finished yet ({len(not_finished)} of {len(s['planned'])} runs; absent from every mean "
                  "below): " + ", ".join(not_finished) + ".", ""]
    for pair, systems in d["summary"].items():
        ref = systems.get(TRANSFORMER, {})
        lines += [f"## {pair}", "", "| variant | seeds | test | valid | test vs Transformer | valid vs Transformer | "
                  "updates | updates/min | train words/s | parameters |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v, r in systems.items():
            diff = {split: (r[split]["mean"] - ref[split]["mean"]) if ref and v != TRANSFORMER
                    and r[split]["mean"] is not None and ref[split]["mean"] is not None else None
                    for split in ("test", "valid")}
            params = f"{r['parameters']:,}" if r.get("parameters") else "-"
            wps = f"{r['words_per_second']['mean']:,.0f}" if r["words_per_second"]["mean"] else "-"
            upm = f"{r['updates_per_minute']['mean']:.1f}" if r["updates_per_minute"]["mean"] else "-"
            updates = f"{r['updates']['mean']:.0f}" if r["updates"]["mean"] is not None else "-"
            lines.append(f"| {v} | {r['test'].get('n', '-')} | {pm(r['test'])} | {pm(r['valid'])} | "
                         f"{_signed(diff['test'])} | {_signed(diff['valid'])} | {updates} | {upm} | {wps} | {params} |")
        lines.append("")
    return "\n".join(lines + race_goal_lines(d["summary"], len(not_finished))) + "\n"


def attention_free(variant: str) -> bool:
    return variant in VARIANTS and "--hybrid-encoder-attention-heads" not in VARIANTS[variant][1]


def race_goal_lines(summary: dict, not_finished: int = 0) -> List[str]:
    """The race's goal as markdown: the best attention-free variant of each pair (by its mean VALID
    sacreBLEU, never by test) at or above the Transformer's mean on test and on valid, every pair.
    While ``not_finished`` runs of the plan are missing, the differences so far are shown and the
    goal is not decided (its means are over every seed of both pairs)."""
    lines = ["## Goal: the best attention-free variant at or above the Transformer", "",
             "Per pair, the attention-free variant with the best mean valid sacreBLEU; its mean minus the "
             "Transformer's, on test and on valid. Met when all are at least 0.", "",
             "| pair | best attention-free variant (by valid) | test − Transformer | valid − Transformer |",
             "|---|---|---:|---:|"]
    met = []
    for pair, systems in summary.items():
        ref = systems.get(TRANSFORMER)
        free = [v for v in systems if attention_free(v) and systems[v]["valid"]["mean"] is not None]
        if not ref or ref["valid"]["mean"] is None or not free:
            continue
        best = max(free, key=lambda v: systems[v]["valid"]["mean"])
        diff = {split: systems[best][split]["mean"] - ref[split]["mean"] for split in ("test", "valid")}
        met += [x >= 0 for x in diff.values()]
        lines.append(f"| {pair} | {best} | {diff['test']:+.2f} | {diff['valid']:+.2f} |")
    if not_finished:
        return lines + ["", f"Goal **not decided yet**: {not_finished} runs not finished; so far {sum(met)} of "
                            f"{len(met)} differences at or above 0."]
    verdict = "met" if met and all(met) else "missed"
    return lines + ["", f"Goal **{verdict}**: {sum(met)} of {len(met)} differences at or above 0."]


def curve_row(variant: str, dropout: float, job: Job, result: dict, params: Optional[int], spec: Optional[dict] = None,
              machine: Optional[dict] = None) -> dict:
    """A finished curve run (:meth:`Race.curve_run`'s result) as a row of the curves report: its
    reported model's test and valid sacreBLEU (:func:`reported_model`: averaged on a plateau, else
    the last checkpoint), every model's scores and every validation point; ``spec``, the settings
    that a later plan must equal to carry the row over, and ``machine``, the one it trained on."""
    model = reported_model(result)
    e = result["eval"][model]
    return {"pair": job.pair, "variant": variant, "dropout": dropout, "stop_reason": result["stop_reason"],
            "converged": result["converged"], "updates": result["updates"], "train_minutes": result["train_minutes"],
            "best_point": {k: result["best_point"][k] for k in ("updates", "train_minutes", "valid_bleu")},
            "reported_model": model, "test": e["test"]["sacrebleu"], "valid": e["valid"]["sacrebleu"],
            "eval": result["eval"], "averaged_checkpoints": result["averaged_checkpoints"], "parameters": params,
            "points": result["points"], "run": job.key, "command": result["command"],
            "signature": result["eval"]["last"]["test"].get("sacrebleu_signature"), "spec": spec, "machine": machine}


def curves_summary(runs: List[dict]) -> dict:
    """``{"chosen", "differences"}`` of the curves report's rows (:func:`curve_row`; those finished).

    ``chosen[pair][variant]``: the variant's (or the Transformer's) best dropout, by the VALID
    sacreBLEU of its reported model (never by test; of equal scores the lowest dropout).
    ``differences[pair][variant]``: each ResMLP variant at its chosen dropout minus the Transformer
    at its own, on test and valid, by :func:`compared_model` (the averaged models when both runs
    plateaued, else the last checkpoints of both)."""
    chosen: Dict[str, dict] = {}
    groups: Dict[tuple, List[dict]] = {}
    for r in runs:
        groups.setdefault((r["pair"], r["variant"]), []).append(r)
    for (pair, variant), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["dropout"])
        top = max(rows, key=lambda r: r["valid"])  # the first (lowest dropout) of equal scores
        chosen.setdefault(pair, {})[variant] = {
            "dropout": top["dropout"], "model": top["reported_model"], "valid": top["valid"], "test": top["test"],
            "dropouts_finished": [r["dropout"] for r in rows]}
    differences: Dict[str, dict] = {}
    for pair, systems in chosen.items():
        if TRANSFORMER not in systems:
            continue
        ref = _chosen_run(runs, pair, TRANSFORMER, systems[TRANSFORMER]["dropout"])
        for variant, c in systems.items():
            if variant == TRANSFORMER:
                continue
            mine = _chosen_run(runs, pair, variant, c["dropout"])
            model = compared_model({"resmlp": mine, "transformer": ref})
            differences.setdefault(pair, {})[variant] = {
                "dropout": c["dropout"], "transformer_dropout": ref["dropout"], "model": model,
                **{split: round(mine["eval"][model][split]["sacrebleu"] - ref["eval"][model][split]["sacrebleu"], 2)
                   for split in ("test", "valid")}}
    return {"chosen": chosen, "differences": differences}


def _chosen_run(runs: List[dict], pair: str, variant: str, dropout: float) -> dict:
    return next(r for r in runs if r["pair"] == pair and r["variant"] == variant and r["dropout"] == dropout)


def curves_markdown(d: dict) -> str:
    s = d["settings"]
    grid = ", ".join(f"{x:g}" for x in s["dropouts"])
    lines = [f"# Token-mixer curves: Multi30k to convergence, dropout {{{grid}}}", "",
             f"The ResMLP variants {', '.join(v for v in s['variants'] if v != TRANSFORMER)} and the tuned "
             f"Transformer, "
             + (f"every one with {s['layers'][0]} encoder and {s['layers'][1]} decoder layers, "
                if s.get("layers") else "") +
             f"each at every dropout of the grid, seed {s['seed']}. Method: {s['method']}. Reported "
             f"model: the average of the last {s['average_last']} checkpoints when the run early-stopped (a "
             "plateau), else the last checkpoint (a run stopped by its minutes is still rising). Each system's "
             "dropout is chosen by its reported model's VALID sacreBLEU, never by test; the test column of that "
             "model is the result.", "",
             f"ResMLP recipe: {recipe_text('resmlp', s['resmlp_recipe'])}; Transformer: "
             f"{recipe_text(TRANSFORMER, s['transformer_recipe'])}; scripts/train_multi30k.sh with `--dropout` "
             "as in each row.", "", f"Reproduce: `{s['command']}`.", "", _machine_line(d["machine"]), ""]
    lines += trained_on_lines([p for r in d["runs"] for p in r["points"]], d["machine"])
    earlier = [r for r in d["runs"] if r.get("machine") and r["machine"].get("date") != d["machine"].get("date")]
    if earlier:
        lines += ["Carried over from this page, trained on earlier machines (their minutes are theirs; the CPU, "
                  "date and commit of the report that recorded each on its machine): "
                  + ", ".join(f"{Path(r['run']).name} ({r['machine'].get('cpu')}, {r['machine'].get('date')}, "
                              f"commit {str(r['machine'].get('git_commit'))[:10]})" for r in earlier) + ".", ""]
    if s["not_finished"]:
        lines += [f"Not finished yet ({len(s['not_finished'])} of {len(s['planned'])} runs; absent from every table "
                  "below, the dropouts chosen among the finished ones): " + ", ".join(s["not_finished"]) + ".", ""]
    if s.get("in_progress"):
        lines += ["Where the unfinished runs stand (single checkpoints' valid sacreBLEU, so not comparable with the "
                  "reported models below, which average the last checkpoints of a plateau):", "",
                  "| run | updates | training min | best valid (@ updates) | last valid | evaluations since the best "
                  "| last evaluated |", "|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['run']} | {r['updates']} | {r['train_minutes']:.1f} | {r['best_valid']:.2f} "
                  f"(@ {r['best_updates']}) | {r['last_valid']:.2f} | {r['since_best']} | {r['evaluated'] or '-'} |"
                  for r in s["in_progress"]]
        lines += [""]
    for pair in s["pairs"]:
        rows = [r for r in d["runs"] if r["pair"] == pair]
        if not rows:
            continue
        chosen = d["chosen"].get(pair, {})
        lines += [f"## {pair}", "", "| variant | dropout | stopped because | updates | training min | "
                  "best valid (@ updates) | reported model | test | valid | parameters |",
                  "|---|---:|---|---:|---:|---:|---|---:|---:|---:|"]
        for r in rows:
            mark = "**" if chosen.get(r["variant"], {}).get("dropout") == r["dropout"] else ""
            params = f"{r['parameters']:,}" if r.get("parameters") else "-"
            model = (f"average of last {len(r['averaged_checkpoints'])}" if r["reported_model"] == "averaged"
                     else MODEL_NAMES["last"])
            best = r["best_point"]
            lines.append(f"| {r['variant']} | {mark}{r['dropout']:g}{mark} | {r['stop_reason']} | {r['updates']} | "
                         f"{r['train_minutes']:.1f} | {best['valid_bleu']:.2f} (@ {best['updates']}) | {model} | "
                         f"{mark}{r['test']:.2f}{mark} | {mark}{r['valid']:.2f}{mark} | {params} |")
        lines += ["", "Each system at its chosen dropout (**bold** above: the best valid sacreBLEU of its reported "
                  "model among the dropouts finished):", "",
                  "| system | chosen dropout | among | reported model | test | valid |", "|---|---:|---|---|---:|---:|"]
        for variant, c in chosen.items():
            lines.append(f"| {variant} | {c['dropout']:g} | {', '.join(f'{x:g}' for x in c['dropouts_finished'])} | "
                         f"{MODEL_NAMES[c['model']]} | {c['test']:.2f} | {c['valid']:.2f} |")
        diffs = d["differences"].get(pair, {})
        if diffs:
            lines += ["", "Each ResMLP variant minus the Transformer, both at their chosen dropouts, compared "
                      "by the same model of both runs (the averages when both plateaued, else the last checkpoints):",
                      "", "| variant − Transformer | dropouts (variant / Transformer) | model compared | test | "
                      "valid |", "|---|---:|---|---:|---:|"]
            for variant, x in diffs.items():
                lines.append(f"| {variant} − Transformer | {x['dropout']:g} / {x['transformer_dropout']:g} | "
                             f"{MODEL_NAMES[x['model']]} of both | **{x['test']:+.2f}** | **{x['valid']:+.2f}** |")
        lines.append("")
    if d["runs"]:
        lines += [f"Plot: `{s['plot']}` (valid sacreBLEU against updates, each system at its chosen dropout); "
                  "every run's points are in the JSON.", "", f"sacreBLEU signature: `{d['runs'][0]['signature']}`"]
    else:
        lines.append("No run has finished yet.")
    return "\n".join(lines) + "\n"


def plot_curves(d: dict, path: Path) -> None:
    """Valid sacreBLEU against updates, one panel per pair, each system at its chosen dropout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [p for p in d["settings"]["pairs"] if p in d["chosen"]]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        for variant, c in d["chosen"][pair].items():
            points = _chosen_run(d["runs"], pair, variant, c["dropout"])["points"]
            style = "--s" if variant == TRANSFORMER else "-o"
            ax.plot([p["updates"] for p in points], [p["valid_bleu"] for p in points], style, ms=3,
                    label=f"{variant}, dropout {c['dropout']:g}")
        style_bleu_axes(ax, pair, "updates")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    """The study's command line, checked; ``command`` is the line to record in its results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["screen", "race", "curves"], default="screen")
    p.add_argument("--race-variants", nargs="+", choices=list(VARIANTS), default=["paper", "relative_glu"],
                   help="race: the ResMLP variants raced against the Transformer")
    p.add_argument("--minutes", type=float, default=25.0, help="race: wall-clock training minutes per run")
    p.add_argument("--seeds", type=int, default=3, help="race: seeds")
    p.add_argument("--curve-variants", nargs="+", choices=list(VARIANTS), default=["paper", "relative_glu"],
                   help="curves: the ResMLP variants trained to convergence beside the Transformer")
    p.add_argument("--dropouts", type=float, nargs="+", default=[0.1, 0.2, 0.3],
                   help="curves: the dropout grid; each system is reported at its best (by valid sacreBLEU)")
    p.add_argument("--layers", type=int, nargs=2, default=None, metavar=("ENCODER", "DECODER"),
                   help="curves and race: every system's encoder and decoder layers, the Transformer's too (default: "
                        "their own 3 + 3), e.g. 6 1 for deep-encoder shallow-decoder models; the runs' names say it "
                        "(en-de.transformer.layers6+1.dropout0.2, en-de.transformer.layers3+1.seed1)")
    p.add_argument("--eval-every", type=int, default=250, help="curves: updates between validations")
    p.add_argument("--curve-seed", type=int, default=1, metavar="SEED",
                   help="curves: every run's seed (default 1); another seed is a new set of runs, named with it "
                        "(en-de.transformer.dropout0.2.seed2); give it a page of its own with --output")
    p.add_argument("--patience", type=int, default=PATIENCE, metavar="N",
                   help=f"curves: evaluations without improvement that stop a run (default {PATIENCE}, the rule of "
                        "every published curve); another N is a new set of runs, named with it "
                        "(en-fr.transformer.dropout0.2.patience6), each starting from the same run with patience "
                        f"{PATIENCE} when that one exists; give it a page of its own with --output")
    p.add_argument("--max-minutes", type=training_minutes, default=150.0,
                   help="curves: training minutes of a run if early stopping has not stopped it "
                        "(0: stop at the first evaluation)")
    p.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="curves: train at most N of the runs not finished yet (the first in the plan's order), "
                        "then report; for a machine lent for a few hours (unfinished runs are lost with it)")
    p.add_argument("--train-only", nargs="+", choices=[*VARIANTS, TRANSFORMER], default=None, metavar="SYSTEM",
                   help="curves: train only these systems' runs (of --curve-variants and transformer), e.g. "
                        "transformer to finish the peer's dropout grid; the report still covers every run of the "
                        "plan (the others as finished or not finished); combines with --max-runs")
    p.add_argument("--carry-from", type=cli_path, nargs="+", default=[], metavar="PAGE",
                   help="curves: other published curve pages (JSON) whose runs with this plan's settings are "
                        "carried over like the stage's own page's, e.g. results/mt_token_mixers_curves.json for "
                        "the Transformer of a new variant's curves")
    p.add_argument("--report-only", action="store_true",
                   help="curves, race: train nothing, report the runs finished so far (same settings as the stage's)")
    p.add_argument("--variants", nargs="+", choices=[*VARIANTS, TRANSFORMER], default=[*VARIANTS, TRANSFORMER])
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    p.add_argument("--lrs", type=float, nargs="+", default=[RESMLP_RECIPE["lr"]],
                   help="ResMLP variants' peak learning rates")
    p.add_argument("--updates", type=int, default=600, help="updates per screen run")
    p.add_argument("--work-dir", type=cli_path, default=REPO / "checkpoints" / "race",
                   help="runs and their cached results (the race's: the sweep's runs are reused)")
    p.add_argument("--results-dir", type=cli_path, default=REPO / "results")
    p.add_argument("--output", default="mt_token_mixers_screen", help="results file stem")
    p.add_argument("--data-root", type=cli_path, default=REPO / "data-bin",
                   help="holds multi30k.en-de and multi30k.en-fr")
    p.add_argument("--parallel", type=int, default=2, help="runs side by side")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (training and evaluation)")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--progress-seconds", type=float, default=120.0)
    p.add_argument("--extra-train-args", default="", help=argparse.SUPPRESS)  # testing: e.g. a tiny model
    args = p.parse_args(argv)
    if "paper" not in args.variants:
        p.error("--variants must include paper, the reference of every row")
    if any(not 0 <= d < 1 for d in args.dropouts) or len(set(args.dropouts)) < len(args.dropouts):
        p.error(f"--dropouts must be distinct and lie in [0, 1), got {' '.join(f'{d:g}' for d in args.dropouts)}")
    if len(set(args.curve_variants)) < len(args.curve_variants):
        p.error("--curve-variants must be distinct")
    if args.curve_seed < 1 or (args.curve_seed != 1 and args.stage != "curves"):
        p.error(f"--curve-seed {args.curve_seed}: a positive seed, for --stage curves")
    if args.patience < 1 or (args.patience != PATIENCE and args.stage != "curves"):
        p.error(f"--patience {args.patience}: a positive number of evaluations, for --stage curves")
    if args.eval_every < 1:
        p.error(f"--eval-every {args.eval_every}: must be at least 1")
    if args.layers and (min(args.layers) < 1 or args.stage not in ("curves", "race")):
        p.error(f"--layers {' '.join(map(str, args.layers))}: two positive layer counts, for --stage curves or race")
    if args.max_runs is not None and (args.max_runs < 1 or args.stage != "curves" or args.report_only):
        p.error(f"--max-runs {args.max_runs}: a positive number of runs, for --stage curves without --report-only")
    if args.train_only and (args.stage != "curves" or args.report_only
                            or not set(args.train_only) <= {*args.curve_variants, TRANSFORMER}):
        p.error(f"--train-only {' '.join(args.train_only)}: systems of the plan (--curve-variants or {TRANSFORMER}), "
                "for --stage curves without --report-only")
    if args.report_only and args.stage not in ("curves", "race"):
        p.error("--report-only is for --stage curves or race")
    # recorded without the options that choose what trains now, not what the results are
    args.command = shlex.join(["python", "-m", "benchmarks.mt_token_mixers",
                               *drop_options(sys.argv[1:] if argv is None else argv,
                                             {"--report-only": False, "--max-runs": True, "--train-only": "+"})])
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    logging.getLogger("mt_tools.evaluate").setLevel(logging.WARNING)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stop_trainings_on_sigterm()
    start = time.time()
    getattr(TokenMixerStudy(args), args.stage)()
    log.info("done in %s", minutes_text((time.time() - start) / 60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
