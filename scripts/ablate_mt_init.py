#!/usr/bin/env python
"""Initialisation ablation for the translation model (issue 7): initial NLL and validation
loss after a fixed number of updates, for each way of starting the decoder's output.

Every variant trains with the CPU recipe of ``scripts/train_multi30k.sh`` (Adam 2e-3,
inverse-sqrt warm-up 400, label smoothing 0.1, dropout 0.1, 2048 tokens) for ``--updates``
updates, two at a time side by side with one thread each (identical conditions), and is
compared by fairseq's validation loss (base 2) at the last update. Writes
``results/mt_init_ablation.{json,md}``.

    .venv/bin/python scripts/ablate_mt_init.py --pair en-de --updates 400
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "one (before)": ["--final-norm-init", "one"],
    "inverse-embed-scale (default)": ["--final-norm-init", "inverse-embed-scale"],
    "zero": ["--final-norm-init", "zero"],
    "one + --scale-output": ["--final-norm-init", "one", "--scale-output"],
    "log-vocab": ["--final-norm-init", "log-vocab"],
}
VALID = re.compile(r"valid on 'valid' subset \| loss ([\d.]+) \| nll_loss ([\d.]+) .*num_updates (\d+)")
TRAIN = re.compile(r"\| epoch \d+:\s+(\d+) / \d+ loss=([\d.]+)")


def train(name: str, flags, args) -> dict:
    save = Path(args.work_dir) / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MINUTES="600",
               SAVE_DIR=str(save), LOG_FORMAT="simple", DATA=str(args.data))
    cmd = ["scripts/train_multi30k.sh", args.pair, "--max-update", str(args.updates),
           "--save-interval-updates", str(args.updates // 2), "--no-save", *flags]
    start = time.time()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    log = out.stdout + out.stderr
    save.mkdir(parents=True, exist_ok=True)
    (save / "train.log").write_text(log)
    if out.returncode != 0:
        raise RuntimeError(f"{name}: training failed\n{log[-3000:]}")
    valid = [(int(u), float(l), float(n)) for l, n, u in VALID.findall(log)]
    first = [float(l) for u, l in TRAIN.findall(log)][:1]
    return {"variant": name, "flags": flags, "updates": valid[-1][0], "valid_loss": valid[-1][1],
            "valid_nll": valid[-1][2], "valid_curve": valid, "first_logged_train_loss": first[0] if first else None,
            "minutes": round((time.time() - start) / 60, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="en-de")
    p.add_argument("--data", type=Path, default=None, help="default: data-bin/multi30k.<pair>")
    p.add_argument("--updates", type=int, default=400)
    p.add_argument("--parallel", type=int, default=2, help="runs side by side, one thread each")
    p.add_argument("--work-dir", default="/tmp/resmlp_init_ablation")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which variants to train (default: all)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "mt_init_ablation")
    args = p.parse_args(argv)
    args.data = args.data or REPO / "data-bin" / f"multi30k.{args.pair}"
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda name: train(name, VARIANTS[name], args), args.variants))
    lines = [f"# Initialisation of the decoder output, resmlp_mt_small, Multi30k {args.pair}, {args.updates} updates",
             "", "| variant | valid loss (bits) | valid nll (bits) | first logged train loss | minutes |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['valid_loss']:.3f} | {r['valid_nll']:.3f} | {r['first_logged_train_loss']} | {r['minutes']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"pair": args.pair, "updates": args.updates, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
