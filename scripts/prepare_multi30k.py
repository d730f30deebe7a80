#!/usr/bin/env python
"""Prepare Multi30k (task 1) for fairseq: ``data-bin/multi30k.<src>-<tgt>``.

Raw text comes from ``--raw-dir`` or ``$MULTI30K_DIR`` (a folder holding
``{train,val,test_2016_flickr}.{en,de,fr}``, such as ``../shared/data/multi30k``); with
neither, the official gzipped files are downloaded from github.com/multi30k/dataset into
``--download-dir``. Splits: train <- train, valid <- val, test <- test_2016_flickr.

Pipeline (``mt_tools.corpus``): checks (files present, aligned, text, valid UTF-8), Moses
punctuation normalisation, empty pairs dropped and counted, one joint SentencePiece BPE model,
training pairs longer than ``--max-positions`` dropped and counted (a longer valid or test line
is an error: references keep every line), ``fairseq-preprocess --joined-dictionary``.

Bad input is an error that names the file and line: bytes that are not UTF-8 (or pass
``--invalid-utf8 replace`` to turn them into U+FFFD, counted per file in the log and
``prep.json``), a file that is mostly not text (``--max-non-text-fraction``), a valid or test
line longer than ``--max-positions``.

Example::

    python scripts/prepare_multi30k.py --raw-dir ../shared/data/multi30k --pairs en-de en-fr
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from mt_tools.corpus import (
    MULTI30K_FILES, CorpusError, add_input_check_arguments, download, extract, multi30k_splits, prepare_parallel_corpus,
)
from mt_tools.layout import DATA_BIN, PreparedData, folder_name

OFFICIAL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}.{lang}.gz"
LANGS = ("en", "de", "fr", "cs")
MAX_POSITIONS = 128  # --max-source-positions/--max-target-positions of scripts/train_multi30k.sh


def parse_pair(text: str):
    src, _, tgt = text.partition("-")
    if src not in LANGS or tgt not in LANGS or src == tgt:
        raise argparse.ArgumentTypeError(f"--pairs: {text!r} is not a language pair like en-de "
                                         f"(languages: {', '.join(LANGS)})")
    return src, tgt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-dir", type=Path, default=os.environ.get("MULTI30K_DIR"),
                        help="folder with the raw Multi30k files (default: $MULTI30K_DIR, else download)")
    parser.add_argument("--download-dir", type=Path, default=Path("data-raw/multi30k"),
                        help="where downloaded files go when no --raw-dir is given")
    parser.add_argument("--pairs", type=parse_pair, nargs="+", default=[("en", "de")],
                        help="language pairs to prepare, e.g. en-de en-fr (default: en-de)")
    parser.add_argument("--destdir-root", type=Path, default=DATA_BIN,
                        help="binarized data goes to <root>/multi30k.<src>-<tgt>")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece BPE vocabulary size")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes for normalisation and binarization")
    parser.add_argument("--max-positions", type=int, default=MAX_POSITIONS,
                        help="longest sentence the model will take, in SentencePiece pieces plus the "
                             "end-of-sentence token: set it to the --max-source-positions/--max-target-positions "
                             f"you train with (default: {MAX_POSITIONS}, as scripts/train_multi30k.sh; the "
                             "plugin's models default to 1024). Longer training pairs are dropped and counted; "
                             "a longer valid/test line is an error naming it (references keep every line)")
    parser.add_argument("--max-ratio", type=float, default=None,
                        help="also drop training pairs whose length ratio in words is above this "
                             "(clean-corpus-n -ratio; default: no ratio filter)")
    add_input_check_arguments(parser)
    parser.add_argument("--force", action="store_true", help="rebuild a destination that already exists")
    args = parser.parse_args(argv)
    if args.max_positions < 2:
        parser.error(f"--max-positions must be at least 2 (one piece and end-of-sentence), got {args.max_positions}")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    log = logging.getLogger("prepare_multi30k")

    raw = args.raw_dir
    if raw is None:
        raw = args.download_dir
        langs = sorted({lang for pair in args.pairs for lang in pair})
        for name in MULTI30K_FILES.values():
            for lang in langs:
                if not (raw / f"{name}.{lang}").exists():
                    extract(download(OFFICIAL.format(name=name, lang=lang), raw / f"{name}.{lang}.gz"), raw)
    elif not raw.is_dir():
        parser.error(f"--raw-dir: {raw} is not a folder")

    for src, tgt in args.pairs:
        dest = args.destdir_root / folder_name("multi30k", src, tgt)
        if PreparedData(dest).is_prepared() and not args.force:
            log.info("%s is already prepared; skipping (pass --force to rebuild)", dest)
            continue
        splits = multi30k_splits(raw, src, tgt, args.max_ratio)
        try:
            stats = prepare_parallel_corpus(
                splits, src, tgt, dest, args.vocab_size, force=args.force, workers=args.workers,
                extra_info={"corpus": "multi30k task 1", "raw_dir": str(raw)},
                invalid_utf8=args.invalid_utf8, max_non_text=args.max_non_text_fraction,
                max_positions=args.max_positions,
            )
        except (CorpusError, FileExistsError) as e:
            log.error("%s", e)
            return 2
        for name, s in stats.items():
            log.info(
                "%s %s: %d pairs kept, %d dropped (empty side), %d dropped (longer than --max-positions %d)%s%s",
                dest.name, name, s.kept, s.dropped_empty, s.dropped_long, args.max_positions,
                f", {s.dropped_clean} dropped (length ratio above {args.max_ratio:g})"
                if args.max_ratio is not None else "",
                "".join(f", {n} lines of {f} with undecodable bytes replaced" for f, n in s.replaced_utf8.items()),
            )
        log.info("wrote %s", dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
