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
Writes results/mt_token_mixers_race.{json,md}.

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
import sys
import time
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[1]
from benchmarks.race_mt import (  # noqa: E402
    PAIRS, Job, Race, _machine_line, mean_std, minutes_text, pm,
)
from mt_tools.recipes import fmt_lr, recipe_name, recipe_text  # noqa: E402

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
    "hybrid1": ("NOT attention-free: the paper's mixer + one self-attention head per encoder layer (upper reference)",
                ["--hybrid-encoder-attention-heads", "1"]),
}
TRANSFORMER = "transformer"
#: the sweeps' best recipes (results/mt_sweep.json, results/mt_sweep_wide_lr.json)
RESMLP_RECIPE = {"lr": 4e-3, "warmup": 300, "layerscale_init": 0.5}
TRANSFORMER_RECIPE = {"lr": 2e-3, "warmup": 300, "norm": "pre"}
PARAMS = re.compile(r"num\. (?:shared )?model params: ([\d,]+)")


def parameters(run_dir: Path):
    """The model's parameter count from fairseq-train's log in ``run_dir`` (None if absent)."""
    for name in ("train.log", "train_resumed.log"):
        try:
            m = PARAMS.search((run_dir / name).read_text(errors="replace"))
        except OSError:
            continue
        if m:
            return int(m.group(1).replace(",", ""))
    return None


class TokenMixerStudy(Race):
    def job(self, variant: str, pair: str, updates: int, lr: float) -> Job:
        """One screen run; the paper's mixer and the Transformer at the sweep's settings on En-De
        are the sweep's jobs (same name, stage and flags: its cached runs count)."""
        system = TRANSFORMER if variant == TRANSFORMER else "resmlp"
        recipe = dict(TRANSFORMER_RECIPE) if system == TRANSFORMER else dict(RESMLP_RECIPE, lr=lr)
        train_args = ["--save-interval-updates", str(updates), "--keep-interval-updates", "1"]
        estimate = updates * 1.5 / 60 + 1.5
        if variant in ("paper", TRANSFORMER) and pair == "en-de":
            name = recipe_name(system, recipe)
            return Job("sweep", name, system, pair, 1, recipe, label=f"{pair} {variant}", max_update=updates,
                       train_args=train_args, estimate_minutes=estimate)
        flags = [] if system == TRANSFORMER else VARIANTS[variant][1]
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
                         "run": str(Path(job.stage) / job.name)})
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
               "machine": self.info, "rows": rows}
        self.publish(a.output, out, screen_markdown(out))
        return out

    def race(self) -> dict:
        """Each of ``--race-variants`` (the paper's mixer, the screen's best, ...) and the Transformer
        at their recipes for ``--minutes`` of wall-clock training, ``--seeds`` seeds, both pairs;
        test and valid sacreBLEU of the last checkpoint, training words/s and updates per minute.
        Runs go ``--parallel`` at a time in this order (a seed's runs together where they fit; with three
        systems on two places a seed's third run shares its group with the next one's first), so every
        run trains beside another one and sees the same load."""
        a = self.args
        self.check_data(a.pairs)
        systems = [*a.race_variants, TRANSFORMER]
        slots = []
        for pair in a.pairs:
            for seed in range(1, a.seeds + 1):
                slot = []
                for v in systems:
                    system = TRANSFORMER if v == TRANSFORMER else "resmlp"
                    recipe = dict(TRANSFORMER_RECIPE) if system == TRANSFORMER else dict(RESMLP_RECIPE, lr=a.lrs[0])
                    flags = [] if system == TRANSFORMER else VARIANTS[v][1]
                    slot.append(Job("token_mixers_race", f"{pair}.{v}.seed{seed}", system, pair, seed, recipe,
                                    label=f"{pair} {v} seed {seed}", minutes=a.minutes, train_args=list(flags),
                                    estimate_minutes=a.minutes + 3))
                slots.append(slot)
        results = self.run_jobs("race", slots, self.score_both)
        runs = []
        for r in results:
            variant = r["name"].split(".")[1]
            f = r["figures"]
            runs.append({"pair": r["pair"], "variant": variant, "seed": r["seed"], "updates": f["updates"],
                         "wall_minutes": f["wall_minutes"], "words_per_second": f.get("words_per_second"),
                         "updates_per_minute": round(f["updates"] / f["train_minutes"], 1)
                         if f.get("train_minutes") else None,
                         "parameters": parameters(self.work / r["stage"] / r["name"]),
                         "sacrebleu": {split: r["eval"][split]["sacrebleu"] for split in ("test", "valid")}})
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
                            "resmlp_recipe": dict(RESMLP_RECIPE, lr=a.lrs[0]), "transformer_recipe": TRANSFORMER_RECIPE,
                            "score": "sacreBLEU of checkpoint_last.pt, beam 4 (mt_tools.evaluate)",
                            "command": a.command},
               "machine": self.info, "runs": runs, "summary": summary}
        self.publish(a.output.replace("_screen", "") + "_race", out, race_markdown(out))
        return out

    def score_both(self, job, save_dir, figures, tag) -> dict:
        evals = {split: self.score(job, save_dir / "checkpoint_last.pt", split) for split in ("test", "valid")}
        log.info("%s %d updates; sacreBLEU test %.2f, valid %.2f", tag, figures["updates"], evals["test"]["sacrebleu"],
                 evals["valid"]["sacrebleu"])
        if not self.args.keep_checkpoints:
            for p in save_dir.glob("checkpoint*.pt"):
                p.unlink()
        return {"figures": figures, "eval": evals}

    def score_valid(self, job, save_dir, figures, tag) -> dict:
        valid = self.score(job, save_dir / "checkpoint_last.pt", "valid")
        log.info("%s valid sacreBLEU %.2f after %d updates", tag, valid["sacrebleu"], figures["updates"])
        if not self.args.keep_checkpoints:
            for p in save_dir.glob("checkpoint*.pt"):
                p.unlink()
        return {"figures": figures, "valid": valid}


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
             f"every moment (1 thread each); {s['score']}; mean ± standard deviation over seeds.", "",
             f"Reproduce: `{s['command']}`.", "", _machine_line(d["machine"]), ""]
    for pair, systems in d["summary"].items():
        ref = systems.get(TRANSFORMER, {})
        lines += [f"## {pair}", "", "| variant | test | valid | test vs Transformer | valid vs Transformer | updates | "
                  "updates/min | train words/s | parameters |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v, r in systems.items():
            diff = {split: (r[split]["mean"] - ref[split]["mean"]) if ref and v != TRANSFORMER
                    and r[split]["mean"] is not None else None for split in ("test", "valid")}
            params = f"{r['parameters']:,}" if r.get("parameters") else "-"
            wps = f"{r['words_per_second']['mean']:,.0f}" if r["words_per_second"]["mean"] else "-"
            upm = f"{r['updates_per_minute']['mean']:.1f}" if r["updates_per_minute"]["mean"] else "-"
            lines.append(f"| {v} | {pm(r['test'])} | {pm(r['valid'])} | {_signed(diff['test'])} | "
                         f"{_signed(diff['valid'])} | {r['updates']['mean']:.0f} | {upm} | {wps} | {params} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["screen", "race"], default="screen")
    p.add_argument("--race-variants", nargs="+", choices=list(VARIANTS), default=["paper", "relative_glu"],
                   help="race: the ResMLP variants raced against the Transformer")
    p.add_argument("--minutes", type=float, default=25.0, help="race: wall-clock training minutes per run")
    p.add_argument("--seeds", type=int, default=3, help="race: seeds")
    p.add_argument("--variants", nargs="+", choices=[*VARIANTS, TRANSFORMER], default=[*VARIANTS, TRANSFORMER])
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    p.add_argument("--lrs", type=float, nargs="+", default=[RESMLP_RECIPE["lr"]],
                   help="ResMLP variants' peak learning rates")
    p.add_argument("--updates", type=int, default=600, help="updates per screen run")
    p.add_argument("--work-dir", type=Path, default=REPO / "checkpoints" / "race", help="runs and their cached results "
                   "(the race's: the sweep's runs are reused)")
    p.add_argument("--results-dir", type=Path, default=REPO / "results")
    p.add_argument("--output", default="mt_token_mixers_screen", help="results file stem")
    p.add_argument("--data-root", type=Path, default=REPO / "data-bin", help="holds multi30k.en-de and multi30k.en-fr")
    p.add_argument("--parallel", type=int, default=2, help="runs side by side")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (training and evaluation)")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--progress-seconds", type=float, default=120.0)
    p.add_argument("--extra-train-args", default="", help=argparse.SUPPRESS)  # testing: e.g. a tiny model
    args = p.parse_args(argv)
    if "paper" not in args.variants:
        p.error("--variants must include paper, the reference of every row")
    args.command = " ".join(["python -m benchmarks.mt_token_mixers", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    logging.getLogger("mt_tools.evaluate").setLevel(logging.WARNING)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    getattr(TokenMixerStudy(args), args.stage)()
    log.info("done in %s", minutes_text((time.time() - start) / 60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
