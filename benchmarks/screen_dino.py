#!/usr/bin/env python
"""Short DINO runs on CIFAR-10 that compare recipes before a 60-minute run, by k-NN.

    python -m benchmarks.screen_dino                          # every screen below not yet done, 2 at a time
    python -m benchmarks.screen_dino --only short_sched lr_4x # some of them
    python -m benchmarks.screen_dino --list                   # the screens and their flags

Each screen is ``python -m vision.dino --config dino_cifar10_cpu_multicrop`` (DINO's multi-crop
recipe scaled to 32 px) with a few flags changed, for the epochs it names, on the CIFAR-10
training images (labels unused); then the weighted k-NN
(k=20, T=0.07) of its teacher on the CIFAR-10 test split, and once the k-NN of the same network
at random initialisation (seed 0, the DINO runs' own initial weights). ``--parallel 2`` runs two
screens side by side with one thread each: the same conditions for both, in half the wall clock.
Accuracy does not depend on the thread count; the training minutes in the table do, so they
compare only screens that ran the same way (the table says how each ran).

Writes ``RESULTS/NAME.json`` and ``RESULTS/NAME.md`` (default ``results/dino_screens``). A screen
whose run folder holds a finished run and its k-NN is not run again; a run folder made with other
flags than the screen's stops the script, naming them.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.bench_dino import DEFAULT_DATA, PY, REPO, check_dino_recipe, dino_recipe, holdout_name, holdout_split
from benchmarks.bench_dino import knn as knn_report
from benchmarks.common import cli_path, read_checkpoint, write_result


def log(msg: str) -> None:
    print(f"[screen_dino {time.strftime('%H:%M:%S')}] {msg}", flush=True)

# Each screen is its "base" screen's flags followed by its own "extra" flags (a later flag wins).
# The DINO recipe of dino_cifar10_cpu_multicrop has schedules counted in epochs, made for 100-300
# epochs: in a run of a few epochs the last layer is frozen for a quarter of it, the teacher momentum reaches
# 1 (a frozen teacher) and the weight decay climbs to 0.4. "short_sched" scales them to the run.
SCREENS: dict[str, dict] = {
    "config": {"epochs": 1, "extra": [], "why": "the base recipe (dino_cifar10_cpu_multicrop)"},
    "short_sched": {"epochs": 1, "extra": ["--freeze-last-layer", "0", "--momentum-teacher", "0.99", "--out-dim",
                                           "1024", "--weight-decay-end", "0.04"],
                    "why": "schedules for a short run: last layer never frozen, teacher "
                           "momentum 0.99 -> 1, weight decay 0.04 constant; 1024 outputs"},
    "lr_4x": {"base": "short_sched", "epochs": 1, "extra": ["--lr", "4e-3"],
              "why": "4x the peak lr (2e-3 at batch 128)"},
    "lr_10x": {"base": "short_sched", "epochs": 1, "extra": ["--lr", "1e-2"],
               "why": "10x the peak lr (5e-3 at batch 128)"},
    # A 32 px local crop at scale 0.05-0.4 is 7-20 px of the image blown up to 32 px, and costs as much as a
    # global crop: CIFAR recipes of DINO-like methods use 2 crops (scale 0.2-1) and no blur. 2 crops cost 8/14
    # of 2 + 2, so 2 epochs of them take about as long as 1 epoch of the screens above.
    "two_crops": {"base": "short_sched", "epochs": 2,
                  "extra": ["--local-crops-number", "0", "--global-crops-scale", "0.2", "1.0",
                            "--blur-probs", "0", "0", "0"],
                  "why": "2 global crops at scale 0.2-1, no local crop, no blur; "
                         "2 epochs (about the time of 1 epoch above)"},
    "two_crops_free_norm": {"base": "two_crops", "epochs": 2, "extra": ["--no-norm-last-layer"],
                            "why": "the head's last-layer norm learned (DINO's norm_last_layer False: "
                                   "logits can sharpen)"},
    # In every screen above the teacher's entropy stays at its value at initialisation (about 6.2-6.3 of
    # ln 1024 = 6.93): the head's logits (cosines, spread about 0.05) are too close for a teacher at 0.04
    # to give sharp targets. A colder teacher amplifies the differences.
    "teacher_temp_002": {"base": "two_crops", "epochs": 2,
                         "extra": ["--teacher-temp", "0.02", "--warmup-teacher-temp", "0.02"],
                         "why": "the teacher at temperature 0.02"},
    "teacher_temp_001": {"base": "two_crops", "epochs": 2,
                         "extra": ["--teacher-temp", "0.01", "--warmup-teacher-temp", "0.01"],
                         "why": "the teacher at temperature 0.01"},
    # The colder teachers are sharp (entropy 3.9 and 1.9 nats after 2 epochs) but their k-NN is lower than two_crops':
    # a sharp teacher is not what this budget lacks. Two more ways to learn more in the same time:
    "two_crops_bs64": {"base": "two_crops", "epochs": 2, "extra": ["--batch-size", "64"],
                       "why": "batches of 64 (twice the steps, the lr scaled with the batch)"},
    "two_crops_scale008": {"base": "two_crops", "epochs": 2, "extra": ["--global-crops-scale", "0.08", "1.0"],
                           "why": "crops cut at scale 0.08-1 (stronger cropping, as SimCLR's CIFAR recipes)"},
    # Batches of 64 gave the best k-NN so far (+5.2 in 22 minutes on 1 thread): more, smaller steps.
    "two_crops_bs32": {"base": "two_crops_bs64", "epochs": 2, "extra": ["--batch-size", "32"],
                       "why": "batches of 32 (4x the steps of two_crops, the lr scaled with the batch)"},
    "bs64_lr_4x": {"base": "two_crops_bs64", "epochs": 2, "extra": ["--lr", "4e-3"],
                   "why": "4x the peak lr (1e-3 at batch 64)"},
}


def screen_flags(name: str) -> list[str]:
    """The ``vision.dino`` flags of screen ``name``: its base's, then its own extra flags."""
    spec = SCREENS[name]
    return [*(screen_flags(spec["base"]) if spec.get("base") else []), *spec["extra"]]


def run_logged(cmd: list[str], log_file: Path) -> None:
    """Run ``cmd`` with its output in ``log_file`` (two screens side by side would interleave)."""
    log(f"$ {shlex.join(cmd)}  > {log_file}")
    with open(log_file, "a") as out:
        proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"screen_dino: command failed ({proc.returncode}), see {log_file}: {shlex.join(cmd)}")


def knn(backbone: list[str], out: Path, args, threads: int, holdout: bool = False) -> dict:
    """k-NN (k=20, T=0.07) of ``backbone`` on the CIFAR-10 test split, or with ``holdout`` on the
    held-out training images (``args.holdout_dir``: queries not used to rank the screens' test k-NN)."""
    data = (["--data-dir", str(args.holdout_dir), "--val-split", "val"] if holdout
            else ["--data-dir", str(args.data_dir), "--val-split", "test", *args.subset_eval])
    data += ["--workers", "0", "--threads", str(threads), "--batch-size", "256"]
    return knn_report(backbone, data, out,
                      runner=lambda cmd: run_logged(cmd, out.parent / f"{out.name}.log"))["results"]["20"]


def screen(name: str, args, threads: int) -> dict:
    """Train screen ``name`` (or reuse its finished run) and k-NN its teacher; its report row."""
    spec = SCREENS[name]
    folder = args.runs_dir / name
    flags = ["--config", args.dino_config, "--data-dir", str(args.data_dir), "--output", str(folder), "--epochs",
             str(spec["epochs"]), "--threads", str(threads), "--resume", "auto", "--log-interval", "20",
             *args.subset_train, *screen_flags(name), *args.dino_args]
    done = None
    if (folder / "last.pth").is_file():  # one read: its epoch, and the flags it was trained with
        saved = read_checkpoint(folder / "last.pth", mmap=True)
        done = int(saved["epoch"])
        check_dino_recipe(saved.get("args") or {}, dino_recipe(flags), folder / "last.pth", prog="screen_dino",
                          advice=f"Move that folder away or give --runs-dir to run screen {name!r}")
        del saved
    if done is None or done + 1 < spec["epochs"]:
        folder.mkdir(parents=True, exist_ok=True)
        run_logged([PY, "-m", "vision.dino", *flags], folder / "train.log")
    result = knn(["--checkpoint", str(folder / "last.pth")], folder / "knn", args, threads)
    held_out = (knn(["--checkpoint", str(folder / "last.pth")], folder / f"knn_{args.holdout_dir.name}", args, threads,
                    holdout=True)
                if args.holdout_dir else None)
    state = read_checkpoint(folder / "last.pth", mmap=True)
    rows = [r["train"] for r in state["summary"]]
    return {
        "name": name, "base": spec.get("base"), "extra": spec["extra"], "why": spec["why"],
        "flags": [*screen_flags(name), *args.dino_args], "epochs": state["epoch"] + 1,
        "threads": int(state["args"].get("threads") or 0),
        "training_minutes": round(sum(r["minutes"] for r in rows), 2), "img_per_s": round(rows[-1]["img_per_s"], 1),
        "loss_by_epoch": [round(r["loss"], 4) for r in rows],
        "teacher_entropy": round(rows[-1].get("teacher_entropy", math.nan), 3),
        "teacher_batch_entropy": round(rows[-1].get("teacher_batch_entropy", math.nan), 3),
        "ln_out_dim": round(math.log(state["args"]["out_dim"]), 3),
        "knn_top1": result["top1"], "knn_top5": result["top5"],
        **({"holdout_knn_top1": held_out["top1"]} if held_out else {}),
    }


def markdown(report: dict) -> str:
    """The screens' table (``NAME.md``) from the report saved as ``NAME.json``."""
    screens, random_init = report["screens"], report["random_init_knn_top1"]
    random_init_holdout = report.get("random_init_holdout_knn_top1")
    md = [
        "# DINO recipe screens on CIFAR-10 (k-NN of the teacher, CIFAR-10 "
        f"test{' and held-out training images' if random_init_holdout is not None else ''})\n",
        f"`python -m benchmarks.screen_dino` (config `{report['dino_config']}`, flags below changed). Same network "
        f"at random init: k-NN top-1 **{random_init:.2f}**. Threads: the torch threads of each run (2 "
        "screens side by side run with 1 each); training minutes compare only rows with the same threads.\n",
        *([f"Held-out k-NN: the last {report['holdout_per_class']} training images of each class as queries, "
           "the other training images as memory (images DINO saw without labels, but not used to rank the "
           f"screens on test); random init **{random_init_holdout:.2f}**.\n"] if random_init_holdout is not None
          else []),
        "| screen | = base + flags | epochs | threads | training min | final loss | teacher entropy / ln K | "
        "k-NN top-1 | vs random init |"
        " held-out k-NN | vs random init |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in screens.values():
        change = f"{r['base'] + ' + ' if r.get('base') else ''}`{shlex.join(r.get('extra', r['flags'])) or '-'}`"
        md.append(f"| {r['name']} | {change} | {r['epochs']} | {r['threads']} | {r['training_minutes']:.1f} | "
                  f"{r['loss_by_epoch'][-1]:.3f} | {r['teacher_entropy']:.2f} / {r['ln_out_dim']:.2f} | "
                  f"{r['knn_top1']:.2f} | {r['knn_top1'] - random_init:+.2f} | "
                  + (f"{r['holdout_knn_top1']:.2f} | {r['holdout_knn_top1'] - random_init_holdout:+.2f} |"
                     if random_init_holdout is not None and "holdout_knn_top1" in r else "- | - |"))
    md += ["", *[f"- **{r['name']}**: {r['why']}. All flags: `{shlex.join(r['flags']) or '-'}`."
                 for r in screens.values()]]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=cli_path, default=DEFAULT_DATA,
                   help="CIFAR-10 ImageFolder root (train/, test/); default $RESMLP_DATA/cifar10")
    p.add_argument("--only", nargs="+", default=None, choices=sorted(SCREENS), help="these screens (default: all)")
    p.add_argument("--list", action="store_true", help="print the screens and exit")
    p.add_argument("--parallel", type=int, default=2,
                   help="screens trained at once, each with 2 // parallel threads (min 1)")
    p.add_argument("--dino-config", default="dino_cifar10_cpu_multicrop",
                   help="the base recipe the screens change (bs64_lr_4x became dino_cifar10_cpu)")
    p.add_argument("--dino-args", default="",
                   help="more vision.dino flags for every screen, one string (e.g. \"--batch-size 64\")")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="train on (and k-NN against) the first K images of each class")
    p.add_argument("--val-max-per-class", type=int, default=None, help="k-NN of the first K test images of each class")
    p.add_argument("--runs-dir", type=cli_path, default=REPO / "runs" / "dino_screens")
    p.add_argument("--results-dir", type=cli_path, default=REPO / "results")
    p.add_argument("--name", default="dino_screens")
    p.add_argument("--holdout-per-class", type=int, default=500,
                   help="also the k-NN with the last N training images of each class as queries and the "
                        "others as memory (bench_dino's split): a ranking not made on the test split; 0: none")
    args = p.parse_args(argv)
    args.dino_args = shlex.split(args.dino_args)
    args.subset_train = ["--max-per-class", str(args.max_per_class)] if args.max_per_class else []
    args.subset_eval = [*args.subset_train, *(["--val-max-per-class", str(args.val_max_per_class)]
                                              if args.val_max_per_class else [])]
    if args.list:
        for name, spec in SCREENS.items():
            print(f"{name}: {spec['epochs']} epoch(s), {shlex.join(screen_flags(name)) or '(no flags)'}\n    "
                  f"{spec['why']}")
        return 0
    if not (args.data_dir / "train").is_dir() or not (args.data_dir / "test").is_dir():
        p.error(f"--data-dir {args.data_dir}: expected train/ and test/ ImageFolder splits (CIFAR-10)")
    if args.parallel < 1:
        p.error("--parallel must be >= 1")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    args.holdout_dir = (holdout_split(args.data_dir / "train",
                                      args.runs_dir / holdout_name(args.holdout_per_class, args.max_per_class),
                                      args.holdout_per_class, args.max_per_class) if args.holdout_per_class > 0
                        else None)
    names = args.only or list(SCREENS)
    threads = max(1, 2 // args.parallel)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {name: pool.submit(screen, name, args, threads) for name in names}
        rows = {name: f.result() for name, f in futures.items()}
    init = ["--checkpoint", str(args.runs_dir / names[0] / "last.pth"), "--random-init", "--seed", "0"]
    random_init = knn(init, args.runs_dir / "knn_random_init", args, 2)
    random_init_holdout = (knn(init, args.runs_dir / f"knn_{args.holdout_dir.name}_random_init", args, 2, holdout=True)
                           if args.holdout_dir else None)
    json_path, md_path = args.results_dir / f"{args.name}.json", args.results_dir / f"{args.name}.md"
    previous = json.loads(json_path.read_text()).get("screens", {}) if json_path.is_file() else {}
    screens = {**previous, **rows}  # screens reported before and not rerun this call stay in the table
    report = {"command": "python -m benchmarks.screen_dino " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "dino_config": args.dino_config, "data": str(args.data_dir), "random_init_knn_top1": random_init["top1"],
              "holdout_per_class": args.holdout_per_class if args.holdout_dir else None,
              "random_init_holdout_knn_top1": random_init_holdout["top1"] if random_init_holdout else None,
              "screens": screens}
    saved = json.dumps(report, indent=2) + "\n"
    write_result(json_path, saved)
    text = markdown(json.loads(saved))  # the table of the very dict saved
    write_result(md_path, text)
    log(f"wrote {json_path} and {md_path}")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
