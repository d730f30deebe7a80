"""Publish training runs as small result files: ``results/<name>.json`` and ``results/<name>.md``.

    python -m benchmarks.vision_report --name vision_cifar10 --run runs/cifar10_final \
        --command "scripts/train_cifar10.sh ..."
    python -m benchmarks.vision_report --name vision_distill_cifar10 --run teacher=runs/d/teacher \
        --run none=runs/d/student_none ...

For each run: the exact settings (``args.yaml``), the per-epoch rows of ``summary.csv``, the
final and best top-1/top-5, the training minutes (sum of the epochs' training time) and the
wall-clock minutes; plus the machine and library versions.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Dict

import torch
import yaml

from benchmarks.common import machine_cores, read_checkpoint, write_result


BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def summarize_run(folder: Path) -> Dict[str, Any]:
    folder = Path(folder)
    with open(folder / "summary.csv") as fh:
        rows = [{k: float(v) if k != "epoch" else int(v) for k, v in row.items() if v != ""}
                for row in csv.DictReader(fh)]
    with open(folder / "args.yaml") as fh:
        args = yaml.safe_load(fh)
    last = read_checkpoint(folder / "last.pth")
    # parameters only: a state dict also holds buffers (BatchNorm statistics of a convnet teacher)
    n_params = sum(v.numel() for k, v in last["model"].items() if not k.endswith(BUFFER_SUFFIXES))
    train_minutes = sum(r["train_minutes"] for r in rows)
    log = (folder / "log.txt").read_text().splitlines() if (folder / "log.txt").exists() else []
    stamps = [line.split()[0] for line in log if line[:2].isdigit() and line[2] == ":"]
    wall = None
    if len(stamps) >= 2:
        h0, m0, s0 = map(int, stamps[0].split(":"))
        h1, m1, s1 = map(int, stamps[-1].split(":"))
        wall = ((h1 * 3600 + m1 * 60 + s1) - (h0 * 3600 + m0 * 60 + s0)) % 86400 / 60
    return {
        "folder": str(folder),
        "model": last["model_name"],
        "model_kwargs": last["model_kwargs"],
        "params": n_params,
        "epochs": len(rows),
        "final": {"epoch": last["epoch"], **{k: v for k, v in last["metrics"].items()}},
        "best": last.get("best"),
        "train_minutes": train_minutes,
        "wall_minutes_from_log": wall,
        "mean_train_img_per_s": sum(r["train_img_per_s"] for r in rows) / len(rows),
        "per_epoch": rows,
        "settings": args,
    }


def markdown(report: Dict[str, Any], name: str) -> str:
    """The page ``NAME.md`` of ``report``, the dict saved as ``NAME.json``."""
    m = report["machine"]
    lines = [f"# {name}", "",
             f"Machine (where this report was written): {m['cpu']} ({machine_cores(m)} cores), "
             f"{m.get('gpu') or 'no GPU'}; torch {m['torch']}, timm {m['timm']}.", ""]
    if report["note"]:
        lines += [report["note"], ""]
    lines += ["Commands:", ""] + [f"    {c}" for c in report["commands"]] + [""]
    lines += ["| run | model | params | epochs | final top-1 | final top-5 | best top-1 | training minutes | img/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, r in report["runs"].items():
        kw = ", ".join(f"{k}={v}" for k, v in r["model_kwargs"].items()
                       if k not in ("num_classes", "drop_rate", "drop_path_rate"))
        lines.append(
            f"| {label} | {r['model']} ({kw}) | {r['params']:,} | {r['epochs']} | {r['final']['top1']:.2f} | "
            f"{r['final']['top5']:.2f} | {r['best']['top1']:.2f} (epoch {r['best']['epoch']}) | "
            f"{r['train_minutes']:.1f} | {r['mean_train_img_per_s']:.0f} |"
        )
    for label, r in report["runs"].items():
        lines += ["", f"{label}: top-1 by epoch: "
                  + ", ".join(f"{row['eval_top1']:.1f}" for row in r["per_epoch"] if "eval_top1" in row)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vision_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="results/NAME.json and results/NAME.md")
    p.add_argument("--run", action="append", required=True, help="a run folder, or LABEL=FOLDER (repeatable)")
    p.add_argument("--command", action="append", default=[], help="the exact command(s) that produced the runs")
    p.add_argument("--note", default="", help="a sentence for the markdown file")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)

    from benchmarks.common import machine_info

    runs = {}
    for item in args.run:
        label, _, folder = item.rpartition("=")
        runs[label or Path(folder).name] = summarize_run(Path(folder))
    report = {"machine": machine_info(torch.device("cpu"), packages=("timm", "numpy")), "commands": args.command,
              "note": args.note, "runs": runs}
    out = Path(args.results_dir) / args.name
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.dumps(report, indent=1) + "\n"
    write_result(out.with_suffix(".json"), saved)
    write_result(out.with_suffix(".md"), markdown(json.loads(saved), args.name))  # the very dict saved
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
