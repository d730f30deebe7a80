"""Learn a vocabulary map (a lexical shortlist, :mod:`resmlp_mt.vocabulary_map`) from a prepared
data folder's training pairs, and report how well it covers the valid set::

    python -m mt_tools.vocabulary_map --data data-bin/multi30k.en-de
        # -> data-bin/multi30k.en-de/vmap.txt, coverage of valid printed and in vmap.json

The file is CTranslate2's vmap format, for the ResMLP ONNX engine
(``Translator.translate(engine="onnx", vocabulary_map=...)``) and for CTranslate2
(``use_vmap``) alike. Learn it from the human references (the default folder), also for a
student trained on distilled targets, so that teacher and student are restricted by the same map.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

from resmlp_core.io import write_text_atomic

from .layout import PreparedData

log = logging.getLogger("mt_tools.vocabulary_map")


def learn(data: Path, out: Optional[Path] = None, per_source: int = 50, frequent: int = 500, min_count: int = 2,
          split: str = "valid") -> dict:
    """Learn the map of the prepared folder ``data`` from its ``train`` pairs, write it to ``out``
    (default ``<data>/vmap.txt``) and its settings and coverage of ``split`` beside it
    (``<out stem>.json``); returns that report."""
    from fairseq.data import Dictionary

    from resmlp_mt.vocabulary_map import build_vocabulary_map, coverage, read_pairs

    prepared = PreparedData(data)
    if not prepared.is_prepared():
        raise FileNotFoundError(f"--data {data}: not a prepared data folder (no {prepared.info_file.name})")
    info = prepared.info()
    src, tgt = info["src_lang"], info["tgt_lang"]
    src_dict, tgt_dict = (Dictionary.load(str(prepared.dictionary(lang))) for lang in (src, tgt))
    out = Path(out) if out is not None else prepared.vocabulary_map
    start = time.perf_counter()
    train = read_pairs(*(str(prepared.binary_prefix("train", src, tgt, lang)) for lang in (src, tgt)))
    log.info("counting co-occurrences in %d training pairs of %s", len(train), data)
    vmap = build_vocabulary_map(train, src_dict, tgt_dict, per_source, frequent, min_count)
    vmap.write(out, src_dict, tgt_dict)
    held_out = read_pairs(*(str(prepared.binary_prefix(split, src, tgt, lang)) for lang in (src, tgt)))
    report = {"data": str(data), "out": str(out), "per_source": per_source, "frequent": frequent,
              "min_count": min_count, "target_vocabulary": len(tgt_dict), "always": len(vmap.always),
              "source_tokens_with_rules": len(vmap.rules), "seconds": round(time.perf_counter() - start, 1),
              f"coverage_{split}": coverage(vmap, held_out)}
    write_text_atomic(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared data folder (its train split is read)")
    p.add_argument("--out", type=Path, help="the vmap file (default: <data>/vmap.txt)")
    p.add_argument("--per-source", type=int, default=50, help="candidates per source piece, by p(target | source)")
    p.add_argument("--frequent", type=int, default=500, help="the most frequent target pieces, always candidates")
    p.add_argument("--min-count", type=int, default=2, help="pairs a source and a target piece must share")
    p.add_argument("--split", default="valid", help="the held-out split whose coverage is reported")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    if args.per_source < 0 or args.frequent < 0 or args.min_count < 1:
        p.error("--per-source and --frequent must be >= 0, --min-count >= 1")
    try:
        report = learn(args.data, args.out, args.per_source, args.frequent, args.min_count, args.split)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    c = report[f"coverage_{args.split}"]
    print(f"wrote {report['out']}: {report['always']} tokens always, rules for {report['source_tokens_with_rules']} "
          f"source pieces; on {args.split}: {100 * c['tokens']:.2f}% of target tokens covered, "
          f"{100 * c['sentences']:.1f}% of sentences entirely, {c['mean_candidates']:.0f} candidates per sentence "
          f"(of {report['target_vocabulary']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
