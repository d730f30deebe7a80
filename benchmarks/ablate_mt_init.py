#!/usr/bin/env python
"""Initialisation ablation for the translation model: initial NLL and validation
loss after a fixed number of updates, for each way of starting the decoder's output.

Every variant trains with the CPU recipe of ``scripts/train_multi30k.sh`` (Adam 2e-3,
inverse-sqrt warm-up 400, label smoothing 0.1, dropout 0.1, 2048 tokens) for ``--updates``
updates, two at a time side by side with one thread each (identical conditions), and is
compared by fairseq's validation loss (base 2) at the last update. Writes
``results/mt_init_ablation.{json,md}``.

    .venv/bin/python -m benchmarks.ablate_mt_init --pair en-de --updates 400
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from benchmarks.common import cli_path, write_result
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "one (before)": ["--final-norm-init", "one"],
    "inverse-embed-scale": ["--final-norm-init", "inverse-embed-scale"],
    "zero": ["--final-norm-init", "zero"],
    "one + --scale-output": ["--final-norm-init", "one", "--scale-output"],
    "log-vocab (default)": ["--final-norm-init", "log-vocab"],
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


def initial_nll_bits(data: Path, arch: str, flags, pairs: int = 64, positions: int = 128) -> tuple:
    """NLL (bits per target token) of a freshly built model on the first ``pairs`` validation
    pairs, and the uniform guess's (both rounded to 0.01 bit)."""
    import math

    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import resmlp_mt  # noqa: F401

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data), "--user-dir", str(REPO / "resmlp_mt"), "--arch", arch,
                                                "--share-all-embeddings", "--max-source-positions", str(positions),
                                                "--max-target-positions", str(positions), "--seed", "1", *flags])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    model = task.build_model(cfg.model).eval()
    dataset = task.dataset("valid")
    sample = dataset.collater([dataset[i] for i in range(min(pairs, len(dataset)))])
    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    mask = sample["target"].ne(task.target_dictionary.pad())
    nll = -lprobs.gather(-1, sample["target"].unsqueeze(-1)).squeeze(-1)[mask].mean().item() / math.log(2)
    return round(nll, 2), round(math.log2(len(task.target_dictionary)), 2)


def markdown(result: dict) -> str:
    """The ablation's table (``mt_init_ablation.md``) from the result saved as its JSON."""
    rows = result["rows"]
    lines = [f"# Initialisation of the decoder output, resmlp_mt_small, Multi30k {result['pair']}",
             "", f"Recipe: {result['recipe']}. Command: `{result['command']}`.", "",
             "Initial NLL: bits per target token of the untrained model on 64 validation pairs (uniform guess: "
             f"{rows[0]['uniform_bits']}); the goal is at most uniform + 1 bit.", "",
             "| variant | initial NLL resmlp_mt_small | initial NLL resmlp_mt | "
             f"valid loss after {result['updates']} updates (bits) | valid nll (bits) | first logged train loss |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['initial_nll_small']} | {r['initial_nll_base']} | {r['valid_loss']:.3f} | "
              f"{r['valid_nll']:.3f} | {r['first_logged_train_loss']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out: Path) -> str:
    """Write ``OUT.json`` (``result``) and ``OUT.md`` (its table); returns the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.dumps(result, indent=2) + "\n"
    write_result(out.with_suffix(".json"), saved)
    text = markdown(json.loads(saved))  # the table of the very dict saved
    write_result(out.with_suffix(".md"), text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="en-de")
    p.add_argument("--data", type=cli_path, default=None, help="default: data-bin/multi30k.<pair>")
    p.add_argument("--updates", type=int, default=400)
    p.add_argument("--parallel", type=int, default=2, help="runs side by side, one thread each")
    p.add_argument("--work-dir", type=cli_path, default=Path("/tmp/resmlp_init_ablation"))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which variants to train (default: all)")
    p.add_argument("--merge", type=cli_path, nargs="*", default=[],
                   help="earlier JSON results of this script whose rows are kept (variants not trained again)")
    p.add_argument("--out", type=cli_path, default=REPO / "results" / "mt_init_ablation")
    args = p.parse_args(argv)
    args.data = args.data or REPO / "data-bin" / f"multi30k.{args.pair}"
    done = {r["variant"]: r for path in args.merge for r in json.loads(path.read_text())["rows"]}
    todo = [v for v in args.variants if v not in done]
    with ThreadPoolExecutor(args.parallel) as pool:
        for row in pool.map(lambda name: train(name, VARIANTS[name], args), todo):
            done[row["variant"]] = row
    rows = [done[v] for v in VARIANTS if v in done]
    for row in rows:
        row["initial_nll_small"], row["uniform_bits"] = initial_nll_bits(args.data, "resmlp_mt_small", row["flags"])
        row["initial_nll_base"], _ = initial_nll_bits(args.data, "resmlp_mt", row["flags"])
    result = {"pair": args.pair, "updates": args.updates, "model": "resmlp_mt_small",
              "recipe": "scripts/train_multi30k.sh (Adam 2e-3, inverse-sqrt warm-up 400, "
                        "label smoothing 0.1, dropout 0.1, 2048 tokens), one thread per run, side by side",
              "command": "python -m benchmarks.ablate_mt_init " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows}
    print(write_report(result, args.out))


if __name__ == "__main__":
    sys.exit(main())
