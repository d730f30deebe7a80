#!/usr/bin/env python
"""Prepare WMT14 English-German or English-French for fairseq, as in the paper's setup.

The paper trains "following the setup from Ott et al. [Scaling NMT, 2018]": the WMT14 training
corpora of fairseq's ``examples/translation/prepare-wmt14en2{de,fr}.sh`` (En-De: Europarl v7,
Common Crawl, News Commentary v12, or v9 with ``--icml17``; En-Fr: Europarl v7, Common Crawl,
UN, News Commentary v9, Gigaword), validation on newstest2013 and test on newstest2014 (the
full ``test-full`` set), training pairs longer than 250 words or with a length ratio above 1.5
removed (``clean-corpus-n.perl -ratio 1.5 1 250``), and a joint BPE vocabulary (32k for En-De as
in Ott et al., 40k for En-Fr as fairseq's script). Where fairseq uses Moses tokenization plus
subword-nmt, this uses Moses punctuation normalisation plus a joint SentencePiece BPE model
(``mt_tools.corpus``); tokenized BLEU is computed on Moses-tokenized output at evaluation.

Raw data: ``--raw-dir`` or ``$WMT14_DIR``, a folder laid out as the official archives unpack::

    training/europarl-v7.de-en.{en,de}            commoncrawl.de-en.{en,de}
    training/news-commentary-v12.de-en.{en,de}    dev/newstest2013.{en,de}
    test-full/newstest2014-deen-src.en.sgm        test-full/newstest2014-deen-ref.de.sgm
    (En-Fr: training/europarl-v7.fr-en.*, commoncrawl.fr-en.*, un/undoc.2000.fr-en.*,
     training/news-commentary-v9.fr-en.*, giga-fren.release2.fixed.*, dev/newstest2013.*,
     test-full/newstest2014-fren-{src.en,ref.fr}.sgm)

With neither, the archives are downloaded from statmt.org into ``--download-dir`` and unpacked.

Example::

    python scripts/prepare_wmt14.py --pair en-de --raw-dir /data/wmt14 --workers 32
"""

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from mt_tools.corpus import (
    CorpusError, add_input_check_arguments, Split, download, extract, prepare_parallel_corpus, sgm_to_text,
)
from mt_tools.layout import DATA_BIN, PreparedData, folder_name

CORPORA = {
    "en-de": ["training/europarl-v7.de-en", "commoncrawl.de-en", "training/news-commentary-v12.de-en"],
    "en-fr": [
        "training/europarl-v7.fr-en", "commoncrawl.fr-en", "un/undoc.2000.fr-en",
        "training/news-commentary-v9.fr-en", "giga-fren.release2.fixed",
    ],
}
ICML17_NEWS_COMMENTARY = "training/news-commentary-v9.de-en"
URLS = {
    "en-de": [
        "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
        "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
        "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
        "http://data.statmt.org/wmt17/translation-task/dev.tgz",
        "http://statmt.org/wmt14/test-full.tgz",
    ],
    "en-fr": [
        "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
        "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
        "http://statmt.org/wmt13/training-parallel-un.tgz",
        "http://statmt.org/wmt14/training-parallel-nc-v9.tgz",
        "http://statmt.org/wmt10/training-giga-fren.tar",
        "http://data.statmt.org/wmt17/translation-task/dev.tgz",
        "http://statmt.org/wmt14/test-full.tgz",
    ],
}
ICML17_URL = "http://statmt.org/wmt14/training-parallel-nc-v9.tgz"
VOCAB = {"en-de": 32000, "en-fr": 40000}


def fetch(pair: str, icml17: bool, into: Path) -> None:
    urls = list(URLS[pair])
    if icml17:
        urls[2] = ICML17_URL
    for url in urls:
        archive = download(url, into / url.rsplit("/", 1)[1])
        marker = into / f".{archive.name}.unpacked"
        if not marker.exists():
            extract(archive, into)
            marker.touch()
    for gz in into.glob("giga-fren.release2.fixed.*.gz"):
        if not gz.with_suffix("").exists():
            extract(gz, into)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=sorted(CORPORA), required=True, help="language pair")
    parser.add_argument("--raw-dir", type=Path, default=os.environ.get("WMT14_DIR"),
                        help="unpacked WMT14 archives (default: $WMT14_DIR, else download)")
    parser.add_argument("--download-dir", type=Path, default=Path("data-raw/wmt14"),
                        help="where archives are downloaded and unpacked when no --raw-dir is given")
    parser.add_argument("--icml17", action="store_true",
                        help="En-De with News Commentary v9 instead of v12 (the ConvS2S data set)")
    parser.add_argument("--destdir", type=Path, help="output folder (default: data-bin/wmt14.<pair>)")
    parser.add_argument("--vocab-size", type=int, help="joint BPE vocabulary (default: 32000 En-De, 40000 En-Fr)")
    parser.add_argument("--max-words", type=int, default=250,
                        help="clean-corpus-n: longest training sentence, in words")
    parser.add_argument("--max-ratio", type=float, default=1.5, help="clean-corpus-n: largest length ratio")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for normalisation and binarization")
    add_input_check_arguments(parser)
    parser.add_argument("--force", action="store_true", help="rebuild a destination that already exists")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    log = logging.getLogger("prepare_wmt14")

    src, tgt = args.pair.split("-")
    raw = args.raw_dir
    if raw is None:
        raw = args.download_dir
        fetch(args.pair, args.icml17, raw)
    elif not raw.is_dir():
        parser.error(f"--raw-dir: {raw} is not a folder")
    dest = args.destdir or DATA_BIN / folder_name("wmt14", src, tgt)
    if PreparedData(dest).is_prepared() and not args.force:
        log.info("%s is already prepared; skipping (pass --force to rebuild)", dest)
        return 0

    corpora = list(CORPORA[args.pair])
    if args.icml17:
        if args.pair != "en-de":
            parser.error("--icml17 applies to en-de only")
        corpora[2] = ICML17_NEWS_COMMENTARY
    code = f"{tgt}{src}"  # file names use deen / fren
    try:
        with tempfile.TemporaryDirectory() as tmp:
            test_src = sgm_to_text(raw / "test-full" / f"newstest2014-{code}-src.{src}.sgm", Path(tmp) / f"test.{src}")
            test_tgt = sgm_to_text(raw / "test-full" / f"newstest2014-{code}-ref.{tgt}.sgm", Path(tmp) / f"test.{tgt}")
            splits = [
                Split("train", [(raw / f"{c}.{src}", raw / f"{c}.{tgt}") for c in corpora],
                      clean=(args.max_words, args.max_ratio)),
                Split("valid", [(raw / "dev" / f"newstest2013.{src}", raw / "dev" / f"newstest2013.{tgt}")]),
                Split("test", [(test_src, test_tgt)]),
            ]
            stats = prepare_parallel_corpus(
                splits, src, tgt, dest, args.vocab_size or VOCAB[args.pair], force=args.force,
                workers=args.workers,
                extra_info={"corpus": f"wmt14 {args.pair}", "raw_dir": str(raw), "icml17": args.icml17},
                invalid_utf8=args.invalid_utf8, max_non_text=args.max_non_text_fraction,
            )
    except (CorpusError, FileExistsError) as e:
        log.error("%s", e)
        return 2
    for name, s in stats.items():
        log.info("%s %s: %d pairs kept, %d dropped (empty side), %d dropped (length/ratio)",
                 dest.name, name, s.kept, s.dropped_empty, s.dropped_clean)
    log.info("wrote %s", dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
