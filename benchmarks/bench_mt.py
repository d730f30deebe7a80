#!/usr/bin/env python
"""Translation benchmark: ResMLP (resmlp_mt_small) against a fairseq Transformer of the same
depth, width, MLP size and heads, on Multi30k En-De and En-Fr, side by side.

Both systems get the same data, joint SentencePiece vocabulary, shared embeddings, batch size in
tokens, optimizer settings (scripts/train_multi30k.sh) and the same wall-clock training budget;
then fairseq-generate (beam 4, batch 128) on test_2016_flickr and val. Writes
results/bench_mt.json (machine, versions, settings, every figure), results/bench_mt.md (tables)
and results/bench_mt_valid_loss.png (validation loss against wall-clock time).

Run it alone on the machine (timings): about 4 x (MINUTES + 2) minutes.

    python -m benchmarks.bench_mt                    # 18 minutes per system: about 85 minutes
    python -m benchmarks.bench_mt --quick            # a few minutes: a data slice, 20 s per system
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from benchmarks.common import write_result
from benchmarks.fairseq_runs import markdown_table, plot_valid_curves, run_benchmark

REPO = Path(__file__).resolve().parents[1]

QUICK_SIZES = {"train": 2000, "val": 100, "test_2016_flickr": 100}


def slice_raw(raw: Path, dest: Path, pairs) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    langs = sorted({lang for pair in pairs for lang in pair.split("-")})
    for name, n in QUICK_SIZES.items():
        for lang in langs:
            lines = (raw / f"{name}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (dest / f"{name}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dir", type=Path,
                        default=Path(os.environ.get("MULTI30K_DIR", REPO.parent / "shared" / "data" / "multi30k")),
                        help="raw Multi30k files (default: $MULTI30K_DIR or ../shared/data/multi30k)")
    parser.add_argument("--pairs", nargs="+", default=["en-de", "en-fr"], choices=["en-de", "en-fr"])
    parser.add_argument("--minutes", type=float, default=18.0, help="training budget per system (wall-clock)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_mt", help="data and checkpoints")
    parser.add_argument("--output-dir", type=Path, default=REPO / "results", help="where the results go")
    parser.add_argument("--name", default="bench_mt", help="results file stem")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per process")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: a data slice, 20 s per system, small vocabulary, "
                             "outputs of at most 1.2 x source length + 10 tokens")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    for name in ("train", "val", "test_2016_flickr"):
        for lang in {lang for pair in args.pairs for lang in pair.split("-")}:
            if not (args.raw_dir / f"{name}.{lang}").is_file():
                parser.error(f"--raw-dir: {args.raw_dir / f'{name}.{lang}'} "
                             "not found (prepare or download Multi30k first)")

    raw, minutes, vocab, batches, generation = args.raw_dir, args.minutes, 8000, 3, []
    if args.quick:
        raw = slice_raw(args.raw_dir, args.workdir / "raw-quick", args.pairs)
        minutes, vocab, batches = min(minutes, 0.34), 1000, 1
        # a model trained for 20 s often never ends a sentence; fairseq-generate's default cap
        # (200 tokens) would then spend most of the run decoding repetitions
        generation = ["--max-len-a", "1.2", "--max-len-b", "10"]
    results = run_benchmark(args.pairs, raw, args.workdir, minutes, vocab_size=vocab, threads=args.threads,
                            profile_batches=batches, generation_args=generation)
    results["settings"]["quick"] = args.quick
    results["settings"]["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / args.name
    write_result(f"{stem}.json", json.dumps(results, indent=1) + "\n")
    table = markdown_table(results)
    write_result(f"{stem}.md", table)
    plot_valid_curves(results, Path(f"{stem}_valid_loss.png"))
    print(table)
    print(f"wrote {stem}.json, {stem}.md, {stem}_valid_loss.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
