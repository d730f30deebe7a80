#!/usr/bin/env python
"""Evaluate a translation checkpoint: fairseq-generate (beam 4), sacreBLEU and tokenized BLEU.

Scores a split of a folder written by ``scripts/prepare_multi30k.py`` or
``scripts/prepare_wmt14.py``: sacreBLEU on detokenized output against the original references
(its signature is printed), and tokenized BLEU with and without compound splitting, as in the
WMT14 papers. Every sentence is translated (``--required-batch-size-multiple 1``) and the
number of hypotheses is checked against the number of references.

Examples::

    python scripts/evaluate_mt.py data-bin/multi30k.en-de --path checkpoints/m30k/checkpoint_best.pt
    python scripts/evaluate_mt.py data-bin/wmt14.en-de --checkpoint-dir checkpoints/wmt14 \\
        --average-last 10 --lenpen 0.6 --split test
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from mt_tools.evaluate import (
    EvaluationError, average_checkpoints, evaluate, format_result, last_checkpoints, result_dict,
)
from resmlp_core.io import write_text_atomic


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="binarized data folder (data-bin/...)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--path", type=Path, help="checkpoint to evaluate")
    which.add_argument("--checkpoint-dir", type=Path, help="folder of fairseq checkpoints (with --average-last)")
    parser.add_argument("--average-last", type=int, default=0, metavar="N",
                        help="average the N newest numbered checkpoints of --checkpoint-dir first "
                             "(0 with --checkpoint-dir: use its checkpoint_best.pt)")
    parser.add_argument("--split", nargs="+", default=["test"], help="splits to score (default: test)")
    parser.add_argument("--beam", type=int, default=4, help="beam size (4 in the paper)")
    parser.add_argument("--lenpen", type=float, default=1.0, help="length penalty (Ott et al. use 0.6 on WMT14)")
    parser.add_argument("--batch-size", type=int, default=128, help="sentences per generation batch")
    parser.add_argument("--samples", type=int, default=5, help="translations to print")
    parser.add_argument("--output", type=Path, help="write the scores as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    log = logging.getLogger("evaluate_mt")

    try:
        checkpoint = args.path
        if args.checkpoint_dir is not None:
            if args.average_last > 0:
                paths = last_checkpoints(args.checkpoint_dir, args.average_last)
                checkpoint = average_checkpoints(paths,
                                                 args.checkpoint_dir / f"checkpoint_avg_last{args.average_last}.pt")
            else:
                checkpoint = args.checkpoint_dir / "checkpoint_best.pt"
        elif args.average_last:
            parser.error("--average-last needs --checkpoint-dir")
        results = {}
        for split in args.split:
            result = evaluate(args.data, checkpoint, split=split, beam=args.beam, lenpen=args.lenpen,
                              batch_size=args.batch_size, num_samples=args.samples)
            print(format_result(result), flush=True)
            results[split] = result_dict(result)
    except EvaluationError as e:
        log.error("%s", e)
        return 2
    if args.output:
        write_text_atomic(args.output, json.dumps({"checkpoint": str(checkpoint), "results": results}, indent=2) + "\n")
        log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
