#!/usr/bin/env python
"""The DINO study's CPU runs: self-supervised ResMLP (DINO) on CIFAR-10, evaluated and fine-tuned.

    python -m benchmarks.bench_dino                      # = make bench-dino: the real runs (about 2.5 hours on 2 cores)
    python -m benchmarks.bench_dino --quick              # a smoke test on a slice of the data (a few minutes)

1. **DINO** (``vision.dino --config dino_cifar10_cpu``) on the CIFAR-10 training images, labels
   unused, for at most ``--minutes`` (60) of training: the number of epochs is set from a
   measured speed (one short DINO epoch on real images, loader and augmentation included) so
   that the cosine schedules end inside the budget, and ``--max-train-minutes`` stops at an
   epoch boundary if it would not.
2. **The supervised model of the same size** (``vision.train --config cifar10_cpu``, the README's
   CIFAR-10 run, ``--supervised-epochs`` 15), or ``--supervised CKPT`` to reuse one.
3. **k-NN** (k=20, T=0.07) and **linear probe** on the CIFAR-10 test split for the DINO teacher,
   the same network at random initialisation (the DINO run's own initial weights: same seed) and
   the supervised model.
4. **Fine-tuning** (``cifar10_cpu`` recipe, new head) from the DINO checkpoint against the same
   recipe from scratch, ``--finetune-epochs`` each.
5. The paper's cross-patch figure, supervised and DINO side by side.

Writes ``RESULTS/NAME.json``, ``RESULTS/NAME.md`` and ``RESULTS/NAME_cross_patch.png``
(default ``results/dino_cifar10``), with each goal of the DINO study stated met or missed:
k-NN after DINO >= random init + 20 points; fine-tuning from DINO beats scratch at equal epochs.
Every stage writes into ``--runs-dir`` and is skipped when its output is complete, so an
interrupted run continues where it stopped (training runs resume with ``--resume auto``).
A DINO plan or run in ``--runs-dir`` made with another DINO recipe (config or ``--dino-args``) is
not reused: the script stops and names the flags that differ.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import cli_path, read_checkpoint, write_result

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DEFAULT_DATA = (Path(os.environ.get("RESMLP_DATA", REPO.parent / "shared" / "data")) / "cifar10").absolute()


def log(msg: str) -> None:
    print(f"[bench_dino {time.strftime('%H:%M:%S')}] {msg}", flush=True)


#: the evaluations, run in this process through their ``main(argv)`` (each starts from its own flags
#: and seed): nine of a quick run's fifteen commands, each a few seconds of imports as a process
IN_PROCESS = ("vision.knn", "vision.linear", "vision.plot")


def run(cmd: list[str]) -> None:
    """Run ``cmd``, a ``python -m MODULE ...`` command (logged as such, to be rerun by hand): the
    trainings as processes, the modules of :data:`IN_PROCESS` here; stop, naming the command,
    when it fails."""
    log("$ " + shlex.join(cmd))
    if cmd[:2] == [PY, "-m"] and cmd[2] in IN_PROCESS:
        try:
            code = importlib.import_module(cmd[2]).main(cmd[3:])
        except SystemExit as stop:  # argparse's errors and the module's own
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            sys.stdout.flush()
    else:
        code = subprocess.run(cmd, cwd=REPO).returncode
    if code:
        raise SystemExit(f"bench_dino: command failed ({code}): {shlex.join(cmd)}")


def last_epoch(path: Path) -> int | None:
    if not path.is_file():
        return None
    return int(read_checkpoint(path, mmap=True)["epoch"])


def dino_recipe(flags: list[str]):
    """The resolved ``vision.dino`` arguments of ``flags`` (config defaults applied)."""
    from vision.config import parse_with_config
    from vision.dino import build_parser

    return parse_with_config(build_parser(), flags)


def check_dino_recipe(saved_args: dict, recipe, where: Path, prog: str = "bench_dino",
                      advice: str = "Pass a new --runs-dir for the new recipe (--supervised CKPT reuses a "
                                    "supervised model already trained), or call with the flags of that run") -> None:
    """Stop, naming the flags, when ``where`` (the plan or the finished DINO run this call would
    reuse) was made with another recipe than this call's: its figures would not be this recipe's."""
    from vision.dino import recipe_changes

    changes = recipe_changes(saved_args, recipe)
    if changes:
        raise SystemExit(f"{prog}: {where} was made with another DINO recipe than this call's ({'; '.join(changes)}); "
                         f"nothing was changed. {advice}")


def measure_dino_img_per_s(args, batch_size: int, probe_dir: Path, n_classes: int) -> float:
    """Images per second of DINO training with this call's recipe, measured by training it: one
    ``vision.dino`` epoch of ``--probe-steps`` batches on a class-balanced slice of the training
    images, so that decoding, multi-crop augmentation and the loader are timed with the model
    steps (in a short run with ``workers: 0`` they are a large share of a step). The first steps,
    slower, are kept in: the estimate errs on the slow side."""
    import shutil

    per_class = math.ceil(batch_size * args.probe_steps / n_classes) + 1
    shutil.rmtree(probe_dir, ignore_errors=True)
    run([PY, "-m", "vision.dino", "--config", args.dino_config, "--data-dir", str(args.data_dir), "--output",
         str(probe_dir), "--threads", str(args.threads), "--log-interval", "1000", *args.dino_args, "--epochs", "1",
         "--max-per-class", str(per_class)])
    row = read_checkpoint(probe_dir / "last.pth", mmap=True)["summary"][-1]
    shutil.rmtree(probe_dir, ignore_errors=True)
    return float(row["train"]["img_per_s"])


def eval_flags(args, data_dir: Path, val_split: str, cache: Path) -> list[str]:
    """The data and feature-cache flags of ``vision.knn`` / ``vision.linear``."""
    return ["--data-dir", str(data_dir), "--val-split", val_split, "--workers", "0", "--threads", str(args.threads),
            "--batch-size", "256", "--features-cache", str(cache)]


KNN = ["--k", "20", "--temperature", "0.07"]  # DINO's eval_knn.py


def knn(backbone: list[str], data: list[str], out: Path, runner=None) -> dict:
    """The report of ``python -m vision.knn`` (k=20, T=0.07) of ``backbone`` on ``data`` (its
    flags), ``OUT.json``: read back when it is there, else run by ``runner`` (default :func:`run`)."""
    if not out.with_suffix(".json").is_file():
        (runner or run)([PY, "-m", "vision.knn", *backbone, *data, *KNN, "--out", str(out)])
    return json.loads(out.with_suffix(".json").read_text())


def knn_and_probe(name: str, backbone: list[str], args, out_dir: Path) -> dict:
    data = [*eval_flags(args, args.data_dir, "test", out_dir / f"features_{name}.pt"), *args.subset_eval]
    knn_out, lin_out = out_dir / f"knn_{name}", out_dir / f"linear_{name}"
    found = knn(backbone, data, knn_out)
    if args.linear and not lin_out.with_suffix(".json").is_file():
        run([PY, "-m", "vision.linear", *backbone, *data, "--out", str(lin_out)])
    result = {"knn_top1": found["results"]["20"]["top1"], "knn_top5": found["results"]["20"]["top5"],
              "backbone": found["backbone"], "train_images": found["data"]["train_images"],
              "test_images": found["data"]["val_images"]}
    if args.linear:
        lin = json.loads(lin_out.with_suffix(".json").read_text())
        result.update(linear_top1=lin["result"]["val"]["top1"], linear_weight_decay=lin["result"]["weight_decay"])
    return result


def holdout_name(per_class: int, max_per_class: int | None) -> str:
    """The folder name of a held-out split: one per split, so that k-NN outputs and feature caches
    named after it (keyed by the data folder's path, not its files) never serve another split."""
    return f"holdout_{per_class}" + (f"_of_first_{max_per_class}" if max_per_class else "")


def holdout_split(train_dir: Path, out: Path, per_class: int, max_per_class: int | None) -> Path:
    """An ImageFolder of symlinks to the training images, for a k-NN free of the test split:
    ``out/val/CLASS`` holds the last ``per_class`` images of each class (sorted by name, as
    ``vision.data`` lists them; the first ``max_per_class`` only, if given) and ``out/train/CLASS``
    the others. Made once; an existing split with the same counts is reused. Name ``out`` with
    :func:`holdout_name`."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    spec = {"train_dir": str(train_dir.resolve()), "per_class": per_class, "max_per_class": max_per_class}
    stamp = out / "split.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    from vision.data import find_classes

    for cls in (train_dir / name for name in find_classes(train_dir)):
        files = sorted(f.name for f in cls.iterdir() if f.is_file()
                       and f.name.lower().endswith(IMG_EXTENSIONS))[:max_per_class]
        if len(files) <= per_class:
            raise SystemExit(f"bench_dino: --holdout-per-class {per_class}: class folder {cls} "
                             f"has {len(files)} images, none would be left for the k-NN memory")
        for split, names in (("train", files[:-per_class]), ("val", files[-per_class:])):
            (out / split / cls.name).mkdir(parents=True)
            for name in names:
                (out / split / cls.name / name).symlink_to((cls / name).resolve())
    stamp.write_text(json.dumps(spec))
    return out


def holdout_knn(name: str, backbone: list[str], args, split: Path, out_dir: Path) -> float:
    """k-NN top-1 (k=20, T=0.07) of ``backbone`` with the held-out training images as queries."""
    features = out_dir / f"features_{split.name}_{name}.pt"
    return knn(backbone, eval_flags(args, split, "val", features),
               out_dir / f"knn_{split.name}_{name}")["results"]["20"]["top1"]


def train_summary(folder: Path) -> dict:
    state = read_checkpoint(folder / "last.pth", mmap=True)
    rows = state["summary"]
    return {
        "epochs": state["epoch"] + 1,
        "top1_by_epoch": [round(r["eval"].get("top1", float("nan")), 2) for r in rows],
        "final_top1": rows[-1]["eval"].get("top1"),
        "final_top5": rows[-1]["eval"].get("top5"),
        "training_minutes": sum(r["train"]["minutes"] for r in rows),
    }


def markdown(report: dict) -> str:
    """The study's page (``NAME.md``) from its report, the dict saved as ``NAME.json``."""
    dino, plan, evals, holdout, finetune = (report[k] for k in ("dino", "plan", "frozen_features", "holdout_knn",
                                                                 "finetune"))
    linear = "linear_top1" in evals["dino"]  # --no-linear: no probe figures
    md = [
        "# Self-supervised ResMLP (DINO) on "
        f"CIFAR-10{' (QUICK SMOKE RUN: a slice of the data)' if report['quick'] else ''}\n",
        f"`{report['command']}` on {report['machine']['cpu']} (torch threads: {report['machine']['torch_threads']}), "
        f"torch {report['machine']['torch']}, timm {report['machine']['timm']}.\n",
        f"DINO: {dino['model']} {{"
        f"""{', '.join(f'{k}: {v}' for k, v in dino['model_kwargs'].items()
                       if k not in ('num_classes', 'drop_path_rate'))}"""
        f"}}, config `{report['dino_config']}`, {dino['epochs']} epochs ({plan['epochs']} planned) in "
        f"{dino['training_minutes']:.1f} training minutes, "
        f"{dino['img_per_s'][-1] if dino['img_per_s'] else 0} img/s; DINO loss by epoch {dino['loss_by_epoch']}"
        + (f"; teacher entropy per image {dino['teacher_entropy_by_epoch']}, "
           f"of the batch mean {dino['teacher_batch_entropy_by_epoch']} "
           f"(ln K = {dino['ln_out_dim']}: both near it = a uniform teacher)" if dino["teacher_entropy_by_epoch"]
           else "") + ".\n",
        "## Frozen features (CIFAR-10 test)\n",
        "| backbone | k-NN top-1 (k=20, T=0.07) | k-NN top-5 |" + (" linear probe top-1 |" if linear else ""),
        "|---|---:|---:|" + ("---:|" if linear else ""),
    ]
    labels = {"dino": "DINO teacher", "random_init": "same network, random init",
              "supervised": "supervised (labels), same size"}
    for key, label in labels.items():
        e = evals[key]
        md.append(f"| {label} | {e['knn_top1']:.2f} | {e['knn_top5']:.2f} |"
                  + (f" {e['linear_top1']:.2f} |" if linear else ""))
    md += [
        f"\n{evals['dino']['train_images']} training images as the k-NN memory / probe training set, "
        f"{evals['dino']['test_images']} test images.\n",
        *([f"k-NN free of the test split (the last {holdout['queries_per_class']} training images of each class as "
           f"queries, the other training images as memory): DINO teacher {holdout['knn_top1']['dino']:.2f}, "
           f"random init {holdout['knn_top1']['random_init']:.2f} ({holdout['gain']:+.2f}).\n"] if holdout else []),
        f"## Fine-tuning ({report['train_config']} recipe, {report['finetune_epochs']} epochs, new 10-class head)\n",
        "| start | top-1 by epoch | final top-1 | training minutes |",
        "|---|---|---:|---:|",
    ]
    for key, label in (("from_dino", "DINO checkpoint"), ("from_scratch", "random init")):
        f = finetune[key]
        md.append(f"| {label} | {', '.join(f'{t:.2f}' for t in f['top1_by_epoch'])} | {f['final_top1']:.2f} | "
                  f"{f['training_minutes']:.1f} |")
    md += ["\n## Goals\n"]
    md += [f"- {g['goal']}: **{'met' if g['met'] else 'missed'}**, {g['figure']}" for g in report["goals"].values()]
    md += [f"\n![cross-patch rows, supervised vs DINO]({report['figure']})\n"]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=cli_path, default=DEFAULT_DATA,
                   help="CIFAR-10 ImageFolder root (train/, test/); default $RESMLP_DATA/cifar10")
    p.add_argument("--minutes", type=float, default=60.0, help="DINO training budget")
    p.add_argument("--supervised", type=cli_path, default=None,
                   help="a vision.train checkpoint of the same model (else trained here)")
    p.add_argument("--supervised-epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--dino-config", default="dino_cifar10_cpu")
    p.add_argument("--train-config", default="cifar10_cpu", help="the supervised and fine-tuning recipe")
    p.add_argument("--dino-args", default="", help="more vision.dino flags, one string (e.g. \"--batch-size 64\")")
    p.add_argument("--train-args", default="", help="more vision.train flags for the supervised and fine-tuning runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--probe-steps", type=int, default=10,
                   help="DINO steps (real data, augmentation and loader included) timed to plan the epochs")
    p.add_argument("--linear", action=argparse.BooleanOptionalAction, default=True, help="also the linear probe")
    p.add_argument("--holdout-per-class", type=int, default=500,
                   help="also the k-NN of DINO and random init with the last N training images "
                        "of each class as queries and the others as memory: a check free of "
                        "the test split (on which screen_dino chose the recipe); 0: none")
    p.add_argument("--runs-dir", type=cli_path, default=REPO / "runs" / "bench_dino")
    p.add_argument("--results-dir", type=cli_path, default=REPO / "results")
    p.add_argument("--name", default="dino_cifar10")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 30 train / 10 test images a class, 1 minute of DINO, 1 epoch of each training "
                        "run; writes under runs/bench_dino_quick unless --runs-dir/--results-dir say otherwise")
    args = p.parse_args(argv)
    args.dino_args, args.train_args = shlex.split(args.dino_args), shlex.split(args.train_args)
    if not (args.data_dir / "train").is_dir() or not (args.data_dir / "test").is_dir():
        p.error(f"--data-dir {args.data_dir}: expected train/ and test/ ImageFolder splits (CIFAR-10)")
    if args.supervised is not None and not args.supervised.is_file():
        p.error(f"--supervised {args.supervised}: no such file")
    subset_train: list[str] = []
    args.subset_eval = []
    if args.quick:
        if args.runs_dir == REPO / "runs" / "bench_dino":
            args.runs_dir = REPO / "runs" / "bench_dino_quick"
        if args.results_dir == REPO / "results":
            args.results_dir = args.runs_dir / "results"
        args.minutes = min(args.minutes, 1.0)
        args.supervised_epochs = min(args.supervised_epochs, 1)
        args.finetune_epochs = min(args.finetune_epochs, 1)
        args.probe_steps = min(args.probe_steps, 2)
        args.holdout_per_class = min(args.holdout_per_class, 3)
        subset_train = ["--max-per-class", "30"]
        args.subset_eval = ["--max-per-class", "30", "--val-max-per-class", "10"]
    runs = args.runs_dir
    runs.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    # ---- 1. DINO, epochs sized to the budget
    dino_dir = runs / "dino"
    plan_file = runs / "dino_plan.json"
    class_dirs = [c for c in (args.data_dir / "train").iterdir() if c.is_dir()]
    n_train, n_classes = sum(min(len(list(c.iterdir())), 30 if args.quick else 10**9)
                             for c in class_dirs), len(class_dirs)
    dino_flags = ["--config", args.dino_config, "--data-dir", str(args.data_dir), "--output", str(dino_dir),
                  "--max-train-minutes", str(args.minutes), "--threads", str(args.threads), "--resume", "auto",
                  "--log-interval", "20", *subset_train, *args.dino_args]
    recipe = dino_recipe(dino_flags)  # with the config's epochs: a plan records it before sizing the run
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
        if "recipe" in plan:  # plans written before the recipe was recorded are checked by the run below
            # the epochs are the plan's own ("epochs"), not the config's: a config whose epochs changed is the
            # same recipe
            check_dino_recipe({k: v for k, v in plan["recipe"].items() if k != "epochs"}, recipe, plan_file)
    else:
        from vision.checkpoint import args_dict

        img_s = measure_dino_img_per_s(args, recipe.batch_size, runs / "dino_probe", n_classes)
        epochs = max(1, math.floor(args.minutes * 60 * img_s * 0.95 / n_train))  # 5% for the variation of step times
        plan = {"probe_img_per_s": img_s, "train_images": n_train, "epochs": epochs, "minutes_budget": args.minutes,
                "recipe": args_dict(recipe)}  # the config's epochs; the run's are "epochs"
        plan_file.write_text(json.dumps(plan, indent=2))
    log(f"DINO: {plan['probe_img_per_s']:.1f} img/s measured -> {plan['epochs']} epochs of {n_train} images in "
        f"{args.minutes} minutes")
    dino_flags += ["--epochs", str(plan["epochs"])]
    done = None
    if (dino_dir / "last.pth").is_file():  # one read: its epoch, and the recipe it was trained with
        state = read_checkpoint(dino_dir / "last.pth", mmap=True)
        done = int(state["epoch"])
        check_dino_recipe(state.get("args") or {}, dino_recipe(dino_flags), dino_dir / "last.pth")
        del state
    if done is None or done + 1 < plan["epochs"]:
        stopped = (dino_dir / "log.txt").is_file() and "stopping before epoch" in (dino_dir / "log.txt").read_text()
        if not stopped:
            run([PY, "-m", "vision.dino", *dino_flags])
    dino_ckpt = dino_dir / "last.pth"

    # ---- 2. the supervised model of the same size
    if args.supervised is not None:
        sup_ckpt = args.supervised
    else:
        sup_dir = runs / "supervised"
        if (last_epoch(sup_dir / "last.pth") or -1) + 1 < args.supervised_epochs:
            run([PY, "-m", "vision.train", "--config", args.train_config, "--data-dir", str(args.data_dir),
                 "--val-split", "test", "--output", str(sup_dir), "--epochs", str(args.supervised_epochs), "--threads",
                 str(args.threads), "--resume", "auto", *subset_train, *(args.subset_eval[2:] if args.quick else []),
                 *args.train_args])
        sup_ckpt = sup_dir / "last.pth"

    # ---- 3. frozen features: k-NN and linear probe
    evals = {
        "dino": knn_and_probe("dino", ["--checkpoint", str(dino_ckpt)], args, runs),
        "random_init": knn_and_probe("random_init", ["--checkpoint", str(dino_ckpt), "--random-init", "--seed", "0"],
                                     args, runs),
        "supervised": knn_and_probe("supervised", ["--checkpoint", str(sup_ckpt)], args, runs),
    }

    holdout = None
    if args.holdout_per_class > 0:
        first = 30 if args.quick else None
        split = holdout_split(args.data_dir / "train", runs / holdout_name(args.holdout_per_class, first),
                              args.holdout_per_class, first)
        top1 = {name: holdout_knn(name, backbone, args, split, runs) for name, backbone in (
            ("dino", ["--checkpoint", str(dino_ckpt)]),
            ("random_init", ["--checkpoint", str(dino_ckpt), "--random-init", "--seed", "0"]))}
        holdout = {"queries_per_class": args.holdout_per_class, "knn_top1": top1,
                   "gain": top1["dino"] - top1["random_init"]}

    # ---- 4. fine-tuning from DINO vs from scratch, same recipe and epochs
    finetune = {}
    for name, extra in (("from_dino", ["--initial-checkpoint", str(dino_ckpt)]), ("from_scratch", [])):
        folder = runs / f"finetune_{name}"
        if (last_epoch(folder / "last.pth") or -1) + 1 < args.finetune_epochs:
            run([PY, "-m", "vision.train", "--config", args.train_config, "--data-dir", str(args.data_dir),
                 "--val-split", "test", "--output", str(folder), "--epochs", str(args.finetune_epochs), "--threads",
                 str(args.threads), "--resume", "auto", *extra, *subset_train,
                 *(args.subset_eval[2:] if args.quick else []), *args.train_args])
        finetune[name] = train_summary(folder)

    # ---- 5. the figure
    figure = args.results_dir / f"{args.name}_cross_patch.png"
    run([PY, "-m", "vision.plot", "--checkpoint", str(sup_ckpt), "--label", "supervised (labels)", "--checkpoint",
         str(dino_ckpt), "--label", "DINO teacher (no labels)", "--out", str(figure)])

    # ---- report
    from benchmarks.common import machine_info
    import torch

    dino_state = read_checkpoint(dino_ckpt, mmap=True)
    dino_rows = dino_state["summary"]
    dino = {
        "epochs": dino_state["epoch"] + 1,
        "planned_epochs": plan["epochs"],
        "training_minutes": sum(r["train"]["minutes"] for r in dino_rows),
        "img_per_s": [round(r["train"]["img_per_s"], 1) for r in dino_rows],
        "loss_by_epoch": [round(r["train"]["loss"], 4) for r in dino_rows],
        # collapse monitors (vision.dino.teacher_entropies); absent from runs made before they were logged
        "teacher_entropy_by_epoch": [round(r["train"]["teacher_entropy"], 3)
                                     for r in dino_rows if "teacher_entropy" in r["train"]],
        "teacher_batch_entropy_by_epoch": [round(r["train"]["teacher_batch_entropy"], 3)
                                           for r in dino_rows if "teacher_batch_entropy" in r["train"]],
        "ln_out_dim": round(math.log(dino_state["args"]["out_dim"]), 3),
        "model": dino_state["model_name"],
        "model_kwargs": dino_state["model_kwargs"],
    }
    knn_gain = evals["dino"]["knn_top1"] - evals["random_init"]["knn_top1"]
    ft_gain = finetune["from_dino"]["final_top1"] - finetune["from_scratch"]["final_top1"]
    goals = {
        "knn_dino_vs_random_init": {
            "goal": "k-NN top-1 after DINO >= random init + 20 points (CIFAR-10 test, "
                    f"<= {args.minutes:g} CPU minutes of DINO)",
            "figure": f"{evals['dino']['knn_top1']:.2f} vs {evals['random_init']['knn_top1']:.2f} (+{knn_gain:.2f})",
            "met": bool(knn_gain >= 20.0 and dino["training_minutes"] <= args.minutes + 1e-6),
        },
        "finetune_dino_vs_scratch": {
            "goal": f"fine-tuning from DINO beats training from scratch at equal epochs ({args.finetune_epochs})",
            "figure": f"{finetune['from_dino']['final_top1']:.2f} vs {finetune['from_scratch']['final_top1']:.2f} "
                      f"({ft_gain:+.2f})",
            "met": bool(ft_gain > 0),
        },
    }
    command = "python -m benchmarks.bench_dino " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = {
        "command": command.strip(),
        "quick": args.quick,
        "dino_config": args.dino_config,
        "train_config": args.train_config,
        "finetune_epochs": args.finetune_epochs,
        "data": str(args.data_dir),
        "machine": machine_info(torch.device("cpu"), packages=("timm",)) | {"torch_threads": args.threads},
        "dino": dino,
        "plan": plan,
        "supervised_checkpoint": str(sup_ckpt),
        "frozen_features": evals,
        "holdout_knn": holdout,
        "finetune": finetune,
        "goals": goals,
        "figure": figure.name,
        "wall_minutes_this_call": (time.time() - started) / 60,
    }
    json_path, md_path = args.results_dir / f"{args.name}.json", args.results_dir / f"{args.name}.md"
    saved = json.dumps(report, indent=2, default=str) + "\n"
    write_result(json_path, saved)
    write_result(md_path, markdown(json.loads(saved)))  # the table of the very dict saved
    log(f"wrote {json_path}, {md_path}, {figure}")
    for g in goals.values():
        log(f"{g['goal']}: {'met' if g['met'] else 'missed'} ({g['figure']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
