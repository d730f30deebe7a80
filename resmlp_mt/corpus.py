"""Parallel-corpus preparation: validation, normalisation, joint SentencePiece BPE, binarization.

The pipeline behind ``scripts/prepare_multi30k.py`` and ``scripts/prepare_wmt14.py``:

1. check every input before anything is written: each file exists, the source and target
   files of a pair have the same number of lines (otherwise the error names both files and
   both counts);
2. stream every split through Moses punctuation normalisation and control-character removal
   (sacremoses; ``normalize-punctuation.perl`` and ``remove-non-printing-char.perl`` in
   fairseq's ``prepare-wmt14en2de.sh``), dropping and counting the pairs with an empty side,
   and, for the training split of WMT, the pairs longer than 250 words or with a length ratio
   above 1.5 (``clean-corpus-n.perl -ratio 1.5 1 250``);
3. train one joint SentencePiece BPE model on the training split of both languages and apply
   it to every split. SentencePiece models whitespace itself, so the text is not
   Moses-tokenized first: decoding the pieces gives untokenized text back, with no lossy Moses
   detokenization. Moses tokenization is used where it belongs, in tokenized BLEU
   (:mod:`resmlp_mt.evaluate`);
4. ``fairseq-preprocess --joined-dictionary`` into the destination folder, which also keeps the
   SentencePiece model (``spm.model``), the original reference and source lines of the valid
   and test splits (``ref/<split>.<lang>``, the kept pairs only, in order) and ``prep.json``
   (counts of kept and dropped pairs, settings).

Nothing already written is lost: the output is built in a temporary folder beside the
destination and moved into place only when complete, and an existing destination is kept
unless ``force`` is set. Everything streams, so WMT-size corpora do not need to fit in memory.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

CHUNK = 2000  # lines per unit of work for the normalisation workers


class CorpusError(ValueError):
    """Bad input corpus: a missing, empty or misaligned file."""


@dataclass
class Split:
    """One split of a parallel corpus.

    ``name`` is fairseq's split name (``train``, ``valid``, ``test``); ``files`` lists one or
    more ``(source_file, target_file)`` pairs, concatenated in order; ``clean`` is
    ``(max_words, max_ratio)`` for clean-corpus-n style filtering, or None.
    """

    name: str
    files: List[Tuple[Path, Path]]
    clean: Optional[Tuple[int, float]] = None


@dataclass
class SplitStats:
    kept: int = 0
    dropped_empty: int = 0
    dropped_clean: int = 0
    empty_examples: List[str] = field(default_factory=list)


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def check_splits(splits: Sequence[Split]) -> None:
    """Raise :class:`CorpusError` naming the file(s) if an input is missing, empty or misaligned."""
    names = [s.name for s in splits]
    if "train" not in names:
        raise CorpusError(f"a 'train' split is required (got {', '.join(names)})")
    for split in splits:
        if not split.files:
            raise CorpusError(f"{split.name}: no corpus files given")
        for src_file, tgt_file in split.files:
            for path in (src_file, tgt_file):
                if not Path(path).is_file():
                    raise CorpusError(f"{split.name}: corpus file not found: {path}")
            n_src, n_tgt = count_lines(src_file), count_lines(tgt_file)
            if n_src != n_tgt:
                raise CorpusError(
                    f"{split.name}: misaligned parallel files: {src_file} has {n_src} lines "
                    f"but {tgt_file} has {n_tgt}"
                )
            if n_src == 0:
                raise CorpusError(f"{split.name}: {src_file} and {tgt_file} are empty")


# --- normalisation (runs in worker processes) ------------------------------------------------

_NORMALIZERS: Dict[str, object] = {}


def normalize(line: str, lang: str) -> str:
    """Moses punctuation normalisation, control characters removed, whitespace collapsed."""
    moses = _NORMALIZERS.get(lang)
    if moses is None:
        from sacremoses import MosesPunctNormalizer

        moses = _NORMALIZERS[lang] = MosesPunctNormalizer(lang, post_remove_control_chars=True)
    return " ".join(moses.normalize(line).split())


def _normalize_chunk(args):
    pairs, src_lang, tgt_lang = args
    return [(normalize(s, src_lang), normalize(t, tgt_lang), s.strip(), t.strip()) for s, t in pairs]


def _read_pairs(split: Split) -> Iterator[Tuple[str, str]]:
    for src_file, tgt_file in split.files:
        with open(src_file, encoding="utf-8", errors="replace") as fs, open(
            tgt_file, encoding="utf-8", errors="replace"
        ) as ft:
            for s, t in zip(fs, ft):
                yield s.rstrip("\n"), t.rstrip("\n")


def _chunks(iterator, size):
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def normalize_split(
    split: Split, src_lang: str, tgt_lang: str, outdir: Path, pool: Optional[Pool]
) -> SplitStats:
    """Write ``outdir/<name>.norm.<lang>`` (normalised) and ``outdir/<name>.raw.<lang>``
    (original lines) for the kept pairs of ``split``; return the counts."""
    from tqdm import tqdm

    stats = SplitStats()
    total = sum(count_lines(s) for s, _ in split.files)
    jobs = ((chunk, src_lang, tgt_lang) for chunk in _chunks(_read_pairs(split), CHUNK))
    results = pool.imap(_normalize_chunk, jobs) if pool is not None else map(_normalize_chunk, jobs)
    paths = [outdir / f"{split.name}.{kind}.{lang}" for kind in ("norm", "raw") for lang in (src_lang, tgt_lang)]
    files = [open(p, "w", encoding="utf-8") for p in paths]
    line_no = 0
    try:
        with tqdm(total=total, desc=f"normalise {split.name}", unit=" pairs", mininterval=2) as bar:
            for chunk in results:
                for src, tgt, raw_src, raw_tgt in chunk:
                    line_no += 1
                    if not src or not tgt:
                        stats.dropped_empty += 1
                        if len(stats.empty_examples) < 5:
                            stats.empty_examples.append(f"line {line_no}")
                        continue
                    if split.clean is not None:
                        max_words, ratio = split.clean
                        ls, lt = len(src.split()), len(tgt.split())
                        if ls > max_words or lt > max_words or ls > ratio * lt or lt > ratio * ls:
                            stats.dropped_clean += 1
                            continue
                    for f, text in zip(files, (src, tgt, raw_src, raw_tgt)):
                        f.write(text + "\n")
                    stats.kept += 1
                bar.update(len(chunk))
    finally:
        for f in files:
            f.close()
    where = ", ".join(f"{s} / {t}" for s, t in split.files)
    if stats.dropped_empty:
        logger.warning(
            "%s: dropped %d sentence pairs with an empty side (%s; first at %s)",
            split.name, stats.dropped_empty, where, ", ".join(stats.empty_examples),
        )
    if stats.dropped_clean:
        logger.info(
            "%s: dropped %d pairs longer than %d words or with a length ratio above %g",
            split.name, stats.dropped_clean, *split.clean,
        )
    if stats.kept == 0:
        raise CorpusError(f"{split.name}: no usable sentence pairs in {where}")
    return stats


# --- SentencePiece ----------------------------------------------------------------------------


def train_sentencepiece(inputs: Sequence[Path], model_prefix: Path, vocab_size: int, max_sentences: int = 10_000_000) -> Path:
    """A joint BPE SentencePiece model over the lines of ``inputs``; returns the .model path."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=",".join(str(p) for p in inputs),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return Path(str(model_prefix) + ".model")


def encode_file(sp_model: Path, src: Path, dest: Path) -> None:
    """Write the space-separated SentencePiece pieces of each line of ``src`` to ``dest``."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    with open(src, encoding="utf-8") as fin, open(dest, "w", encoding="utf-8") as fout:
        for chunk in _chunks(fin, 10000):
            for pieces in sp.encode([line.rstrip("\n") for line in chunk], out_type=str):
                fout.write(" ".join(pieces) + "\n")


# --- the whole pipeline ------------------------------------------------------------------------


def prepare_parallel_corpus(
    splits: Sequence[Split],
    src_lang: str,
    tgt_lang: str,
    destdir: Path,
    vocab_size: int,
    force: bool = False,
    workers: int = 1,
    extra_info: Optional[dict] = None,
) -> Dict[str, SplitStats]:
    """Run the whole pipeline (module docstring); return each split's counts."""
    destdir = Path(destdir)
    if destdir.exists() and any(destdir.iterdir()) and not force:
        raise FileExistsError(
            f"{destdir} already exists and is not empty; pass --force to rebuild it "
            "(the old folder is replaced only once the new one is complete)"
        )
    check_splits(splits)
    destdir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{destdir.name}.tmp-", dir=destdir.parent))
    try:
        text = work / "text"
        text.mkdir()
        with Pool(workers) if workers > 1 else _NoPool() as pool:
            stats = {s.name: normalize_split(s, src_lang, tgt_lang, text, pool or None) for s in splits}

        logger.info("training a joint SentencePiece BPE model, %d pieces", vocab_size)
        sp_model = train_sentencepiece(
            [text / f"train.norm.{src_lang}", text / f"train.norm.{tgt_lang}"], work / "spm", vocab_size
        )
        (work / "ref").mkdir()
        for split in splits:
            for lang in (src_lang, tgt_lang):
                encode_file(sp_model, text / f"{split.name}.norm.{lang}", text / f"{split.name}.{lang}")
                if split.name != "train":
                    shutil.copy(text / f"{split.name}.raw.{lang}", work / "ref" / f"{split.name}.{lang}")
        cmd = [
            sys.executable, "-m", "fairseq_cli.preprocess",
            "--source-lang", src_lang, "--target-lang", tgt_lang,
            "--joined-dictionary", "--destdir", str(work), "--workers", str(workers),
        ]
        for split in splits:
            cmd += [f"--{split.name}pref", str(text / split.name)]
        logger.info("binarizing: %s", " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"fairseq-preprocess failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        shutil.rmtree(text)
        info = {
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            "vocab_size": vocab_size,
            "splits": {
                s.name: {
                    "files": [[str(a), str(b)] for a, b in s.files],
                    "kept": stats[s.name].kept,
                    "dropped_empty": stats[s.name].dropped_empty,
                    "dropped_clean": stats[s.name].dropped_clean,
                    "clean": s.clean,
                }
                for s in splits
            },
            **(extra_info or {}),
        }
        (work / "prep.json").write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(work, destdir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return stats


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``; an existing ``dest`` is removed only after the move."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        new.rename(dest)
        shutil.rmtree(old)
    else:
        new.rename(dest)


# --- downloads and archives --------------------------------------------------------------------


def download(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` (kept if already there), through a temporary file."""
    from tqdm import tqdm

    dest = Path(dest)
    if dest.exists():
        logger.info("%s already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConnectionError(
            f"could not download {url} ({e}); without internet access, point the script at a "
            "local copy of the data instead (see --help)"
        ) from e
    tmp.rename(dest)
    return dest


def extract(archive: Path, into: Path) -> None:
    """Unpack a .tgz/.tar archive into ``into``, or a .gz file beside itself."""
    archive = Path(archive)
    if archive.name.endswith((".tgz", ".tar.gz", ".tar")):
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    elif archive.suffix == ".gz":
        with gzip.open(archive, "rb") as fin, open(into / archive.stem, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    else:
        raise ValueError(f"do not know how to unpack {archive}")


_SEG = re.compile(r"<seg[^>]*>\s*(.*?)\s*</seg>", re.IGNORECASE)


def sgm_to_text(sgm: Path, dest: Path) -> Path:
    """Extract the ``<seg>`` lines of a WMT ``.sgm`` file, one per line, with ``’`` -> ``'``
    as fairseq's prepare-wmt14 scripts do."""
    if not Path(sgm).is_file():
        raise CorpusError(f"test set file not found: {sgm}")
    with open(sgm, encoding="utf-8") as fin, open(dest, "w", encoding="utf-8") as fout:
        for line in fin:
            match = _SEG.search(line)
            if match:
                fout.write(match.group(1).replace("\u2019", "'") + "\n")
    return dest
