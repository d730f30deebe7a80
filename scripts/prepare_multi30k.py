#!/usr/bin/env python
"""Prepare Multi30k (task 1) for fairseq: ``data-bin/multi30k.<src>-<tgt>``.

Raw text comes from ``--raw-dir`` or ``$MULTI30K_DIR`` (a folder holding
``{train,val,test_2016_flickr}.{en,de,fr}``, such as ``../shared/data/multi30k``); with
neither, the official gzipped files are downloaded from github.com/multi30k/dataset into
``--download-dir``. Splits: train <- train, valid <- val, test <- test_2016_flickr.

Pipeline (``resmlp_mt.corpus``): checks, Moses punctuation normalisation, empty pairs dropped
and counted, one joint SentencePiece BPE model, ``fairseq-preprocess --joined-dictionary``.

Example::

    python scripts/prepare_multi30k.py --raw-dir ../shared/data/multi30k --pairs en-de en-fr
"""

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resmlp_mt.corpus import CorpusError, Split, download, extract, prepare_parallel_corpus  # noqa: E402

OFFICIAL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}.{lang}.gz"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
LANGS = ("en", "de", "fr", "cs")


def parse_pair(text: str):
    src, _, tgt = text.partition("-")
    if src not in LANGS or tgt not in LANGS or src == tgt:
        raise argparse.ArgumentTypeError(f"--pairs: {text!r} is not a language pair like en-de (languages: {', '.join(LANGS)})")
    return src, tgt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dir", type=Path, default=os.environ.get("MULTI30K_DIR"),
                        help="folder with the raw Multi30k files (default: $MULTI30K_DIR, else download)")
    parser.add_argument("--download-dir", type=Path, default=Path("data-raw/multi30k"),
                        help="where downloaded files go when no --raw-dir is given")
    parser.add_argument("--pairs", type=parse_pair, nargs="+", default=[("en", "de")],
                        help="language pairs to prepare, e.g. en-de en-fr (default: en-de)")
    parser.add_argument("--destdir-root", type=Path, default=Path("data-bin"),
                        help="binarized data goes to <root>/multi30k.<src>-<tgt>")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece BPE vocabulary size")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes for normalisation and binarization")
    parser.add_argument("--force", action="store_true", help="rebuild a destination that already exists")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stdout, force=True)
    log = logging.getLogger("prepare_multi30k")

    raw = args.raw_dir
    if raw is None:
        raw = args.download_dir
        langs = sorted({lang for pair in args.pairs for lang in pair})
        for name in SPLITS.values():
            for lang in langs:
                if not (raw / f"{name}.{lang}").exists():
                    extract(download(OFFICIAL.format(name=name, lang=lang), raw / f"{name}.{lang}.gz"), raw)
    elif not raw.is_dir():
        parser.error(f"--raw-dir: {raw} is not a folder")

    for src, tgt in args.pairs:
        dest = args.destdir_root / f"multi30k.{src}-{tgt}"
        if (dest / "prep.json").exists() and not args.force:
            log.info("%s is already prepared; skipping (pass --force to rebuild)", dest)
            continue
        splits = [Split(split, [(raw / f"{name}.{src}", raw / f"{name}.{tgt}")]) for split, name in SPLITS.items()]
        try:
            stats = prepare_parallel_corpus(
                splits, src, tgt, dest, args.vocab_size, force=args.force, workers=args.workers,
                extra_info={"corpus": "multi30k task 1", "raw_dir": str(raw)},
            )
        except (CorpusError, FileExistsError) as e:
            log.error("%s", e)
            return 2
        for name, s in stats.items():
            log.info("%s %s: %d pairs kept, %d dropped (empty side)", dest.name, name, s.kept, s.dropped_empty)
        log.info("wrote %s", dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
