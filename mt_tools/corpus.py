"""Parallel-corpus preparation: validation, normalisation, joint SentencePiece BPE, binarization.

The pipeline behind ``scripts/prepare_multi30k.py`` and ``scripts/prepare_wmt14.py``:

1. check every input before anything is written: each file exists, the source and target
   files of a pair have the same number of lines (otherwise the error names both files and
   both counts), each file is text (a file where more than ``max_non_text`` of the lines hold
   undecodable bytes or control characters is refused, with the fraction) and valid UTF-8
   (otherwise the error names the file, line, byte and what was found; with
   ``invalid_utf8="replace"`` the bytes become U+FFFD and the lines are counted per file);
2. stream every split through Moses punctuation normalisation and control-character removal
   (sacremoses; ``normalize-punctuation.perl`` and ``remove-non-printing-char.perl`` in
   fairseq's ``prepare-wmt14en2de.sh``), dropping and counting the pairs with an empty side,
   and, for the training split of WMT, the pairs longer than 250 words or with a length ratio
   above 1.5 (``clean-corpus-n.perl -ratio 1.5 1 250``);
3. train one joint SentencePiece BPE model on the training split of both languages and apply
   it to every split. SentencePiece models whitespace itself, so the text is not
   Moses-tokenized first: decoding the pieces gives untokenized text back, with no lossy Moses
   detokenization. Moses tokenization is used where it belongs, in tokenized BLEU
   (:mod:`mt_tools.evaluate`). With ``max_positions``, the length fairseq sees (pieces plus
   the end-of-sentence token) is checked against the model's ``--max-source-positions`` /
   ``--max-target-positions``: longer training pairs are dropped and counted (already before
   SentencePiece when the word count alone is too many), and a longer valid or test line is
   an error naming the file and line, since references must keep every line (fairseq-train
   would stop at validation on it);
4. ``fairseq-preprocess --joined-dictionary`` into the destination folder, which also keeps the
   SentencePiece model, the original reference and source lines of the valid and test splits
   (the kept pairs only, in order) and the counts of kept and dropped pairs and the settings:
   the layout of :mod:`mt_tools.layout`.

Nothing already written is lost: the output is built in a temporary folder beside the
destination and moved into place only when complete (:func:`resmlp_core.io.staged_folder`: a
kill at any point leaves the old folder or the new one, and the next run removes what it left),
and an existing destination is kept unless ``force`` is set. Everything streams, so WMT-size
corpora do not need to fit in memory.
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
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from resmlp_core.io import staged_folder, write_atomic
from resmlp_core.text import normalize  # noqa: F401  (also mt_tools.corpus.normalize for its callers)

from .layout import PreparedData

logger = logging.getLogger(__name__)

CHUNK = 2000  # lines per unit of work for the normalisation workers


INVALID_UTF8 = ("strict", "replace")
MAX_NON_TEXT = 0.1  # default largest fraction of lines with undecodable bytes or control characters


def add_input_check_arguments(parser) -> None:
    """The flags of the input checks, shared by scripts/prepare_multi30k.py and prepare_wmt14.py."""
    parser.add_argument("--invalid-utf8", choices=INVALID_UTF8, default="strict",
                        help="bytes that are not UTF-8: 'strict' (default) stops with the file, line and byte; "
                             "'replace' turns them into U+FFFD and counts the lines per file")
    parser.add_argument("--max-non-text-fraction", type=float, default=MAX_NON_TEXT,
                        help="refuse a file where more than this fraction of the lines hold undecodable bytes "
                             f"or control characters (default: {MAX_NON_TEXT:g})")


class CorpusError(ValueError):
    """Bad input corpus: a missing, empty, misaligned, undecodable or non-text file, or a
    reference line too long for the model."""


@dataclass
class Split:
    """One split of a parallel corpus.

    ``name`` is fairseq's split name (``train``, ``valid``, ``test``); ``files`` lists one or
    more ``(source_file, target_file)`` pairs, concatenated in order; ``clean`` is
    ``(max_words, max_ratio)`` for clean-corpus-n style filtering (either may be None), or None.
    """

    name: str
    files: List[Tuple[Path, Path]]
    clean: Optional[Tuple[int, float]] = None


@dataclass
class SplitStats:
    kept: int = 0
    dropped_empty: int = 0
    dropped_clean: int = 0
    dropped_long: int = 0
    empty_examples: List[str] = field(default_factory=list)
    long_examples: List[str] = field(default_factory=list)
    replaced_utf8: Dict[str, int] = field(default_factory=dict)  # file -> lines with U+FFFD put in


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# C0/C1 control characters other than tab and newline (a carriage return only before a
# newline: CRLF files), and U+FFFD, the mark of an earlier lossy decoding.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]|\r(?!\n)")
_MAYBE_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")  # a fast first look (any \r)
_CONTROL_LINE = re.compile(r"^[^\n]*?(?:[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]|\r(?!\n))", re.M)


@dataclass
class FileScan:
    """What :func:`scan_file` found in one file."""

    path: Path
    lines: int = 0
    bad_utf8_lines: int = 0  # lines with bytes that are not UTF-8
    non_text_lines: int = 0  # lines with undecodable bytes or control characters
    first_bad_utf8: Optional[str] = None  # "line L, byte B (...): b'..' (reason) after '...'"

    @property
    def non_text_fraction(self) -> float:
        return self.non_text_lines / self.lines if self.lines else 0.0


def scan_file(path: Path, block: int = 1 << 22) -> FileScan:
    """Count the lines of ``path`` and those that are not valid UTF-8 or hold control
    characters, streaming (blocks of whole lines are decoded at once; only a block that fails
    is decoded line by line)."""
    scan = FileScan(Path(path))
    offset = 0
    with open(path, "rb") as f:
        while True:
            lines = f.readlines(block)
            if not lines:
                break
            data = b"".join(lines)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                line_offset = offset
                for i, line in enumerate(lines):
                    try:
                        text = line.decode("utf-8")
                    except UnicodeDecodeError as e:
                        scan.bad_utf8_lines += 1
                        scan.non_text_lines += 1
                        if scan.first_bad_utf8 is None:
                            before = line[max(0, e.start - 30):e.start].decode("utf-8", errors="replace")
                            scan.first_bad_utf8 = (
                                f"line {scan.lines + i + 1}, byte {e.start + 1} (offset {line_offset + e.start} "
                                f"in the file): {line[e.start:e.end]!r} ({e.reason}) after {before!r}"
                            )
                    else:
                        if _CONTROL.search(text):
                            scan.non_text_lines += 1
                    line_offset += len(line)
            else:
                if _MAYBE_CONTROL.search(text):
                    scan.non_text_lines += len(_CONTROL_LINE.findall(text))
            scan.lines += len(lines)
            offset += len(data)
    return scan


def check_splits(
    splits: Sequence[Split], invalid_utf8: str = "strict", max_non_text: float = MAX_NON_TEXT
) -> Dict[Path, FileScan]:
    """Raise :class:`CorpusError` naming the file(s) if an input is missing, empty, misaligned,
    not text (more than ``max_non_text`` of its lines with undecodable bytes or control
    characters) or, unless ``invalid_utf8`` is ``"replace"``, not valid UTF-8. Returns each
    file's :class:`FileScan`."""
    if invalid_utf8 not in INVALID_UTF8:
        raise ValueError(f"invalid_utf8 must be one of {INVALID_UTF8}, got {invalid_utf8!r}")
    names = [s.name for s in splits]
    if "train" not in names:
        raise CorpusError(f"a 'train' split is required (got {', '.join(names)})")
    scans: Dict[Path, FileScan] = {}
    for split in splits:
        if not split.files:
            raise CorpusError(f"{split.name}: no corpus files given")
        for src_file, tgt_file in split.files:
            for path in (src_file, tgt_file):
                if not Path(path).is_file():
                    raise CorpusError(f"{split.name}: corpus file not found: {path}")
            for path in (src_file, tgt_file):
                scan = scans[Path(path)] = scan_file(path)
                if scan.non_text_fraction > max_non_text:
                    raise CorpusError(
                        f"{split.name}: {path} does not look like text: {scan.non_text_lines} of its "
                        f"{scan.lines} lines ({scan.non_text_fraction:.1%}) hold undecodable bytes or "
                        f"control characters, more than --max-non-text-fraction {max_non_text:g}"
                        + (f"; the first undecodable byte is at {scan.first_bad_utf8}" if scan.first_bad_utf8 else "")
                    )
            n_src, n_tgt = scans[Path(src_file)].lines, scans[Path(tgt_file)].lines
            if n_src != n_tgt:
                raise CorpusError(
                    f"{split.name}: misaligned parallel files: {src_file} has {n_src} lines "
                    f"but {tgt_file} has {n_tgt}"
                )
            if n_src == 0:
                raise CorpusError(f"{split.name}: {src_file} and {tgt_file} are empty")
            for path in (src_file, tgt_file):
                scan = scans[Path(path)]
                if scan.bad_utf8_lines and invalid_utf8 == "strict":
                    raise CorpusError(
                        f"{split.name}: {path} is not valid UTF-8 at {scan.first_bad_utf8}; "
                        f"{scan.bad_utf8_lines} of its {scan.lines} lines hold undecodable bytes. Convert "
                        "the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or pass --invalid-utf8 replace "
                        "to replace them with U+FFFD (counted per file in the log and prep.json)"
                    )
    return scans


# --- normalisation (runs in worker processes) ------------------------------------------------

def _normalize_chunk(args):
    pairs, src_lang, tgt_lang = args
    return [(normalize(s, src_lang), normalize(t, tgt_lang), s.strip(), t.strip()) for s, t in pairs]


def _decode_line(line: bytes, errors: str) -> str:
    """One line read in binary (lines end at a newline only, as :func:`count_lines` counts
    them), without its line ending (newline or carriage return + newline)."""
    line = line[:-1] if line.endswith(b"\n") else line
    line = line[:-1] if line.endswith(b"\r") else line
    return line.decode("utf-8", errors=errors)


def _read_pairs(split: Split, errors: str = "strict") -> Iterator[Tuple[Tuple[int, int], Tuple[str, str]]]:
    """``((file_index, line_number), (source_line, target_line))`` for every line, 1-based."""
    for index, (src_file, tgt_file) in enumerate(split.files):
        with open(src_file, "rb") as fs, open(tgt_file, "rb") as ft:
            for line_no, (s, t) in enumerate(zip(fs, ft), 1):
                yield (index, line_no), (_decode_line(s, errors), _decode_line(t, errors))


def _where(split: Split, loc: Tuple[int, int], side: Optional[int] = None) -> str:
    """``line L of FILE`` (the source file, the target file, or both)."""
    index, line_no = loc
    files = split.files[index] if side is None else (split.files[index][side],)
    return f"line {line_no} of {' / '.join(str(f) for f in files)}"


def _too_long_error(split: Split, too_long, max_positions: int, measured) -> CorpusError:
    """``too_long``: ``[(positions, location, side)]``, in order; ``measured(positions)``: how."""
    positions, loc, side = too_long[0]
    longest = max(p for p, _, _ in too_long)
    more = (f"; {len(too_long)} lines of {split.name} are too long, the longest {longest} positions"
            if len(too_long) > 1 else "")
    return CorpusError(
        f"{split.name}: {_where(split, loc, side)} is too long for --max-positions {max_positions}: "
        f"{measured(positions)}{more}. fairseq-train would stop at validation on it (and "
        "--skip-invalid-size-inputs-valid-test would leave it out of the scores): reference lines are "
        "never dropped, so shorten or remove the pair in the raw files, or raise --max-positions and "
        "train with --max-source-positions/--max-target-positions at least as large"
    )


def _chunks(iterator, size):
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def normalize_split(
    split: Split,
    src_lang: str,
    tgt_lang: str,
    outdir: Path,
    pool: Optional[Pool],
    scans: Optional[Dict[Path, FileScan]] = None,
    invalid_utf8: str = "strict",
    max_positions: Optional[int] = None,
) -> SplitStats:
    """Write ``outdir/<name>.norm.<lang>`` (normalised), ``outdir/<name>.raw.<lang>``
    (original lines) and ``outdir/<name>.lines`` (their file index and line number) for the
    kept pairs of ``split``; return the counts. ``scans`` (from :func:`check_splits`) gives the
    line counts and undecodable lines. With ``max_positions``, a pair with more words than that
    (each word is one SentencePiece piece or more, plus end-of-sentence) is dropped from
    ``train`` and an error elsewhere; :func:`limit_positions` checks the exact lengths later."""
    from tqdm import tqdm

    scans = scans or {}
    stats = SplitStats()
    total = sum(scans[Path(s)].lines if Path(s) in scans else count_lines(s) for s, _ in split.files)
    errors = "replace" if invalid_utf8 == "replace" else "strict"
    jobs = (
        ([p for _, p in chunk], src_lang, tgt_lang, [loc for loc, _ in chunk])
        for chunk in _chunks(_read_pairs(split, errors), CHUNK)
    )
    results = pool.imap(_normalize_located, jobs) if pool is not None else map(_normalize_located, jobs)
    paths = [outdir / f"{split.name}.{kind}.{lang}" for kind in ("norm", "raw") for lang in (src_lang, tgt_lang)]
    files = [open(p, "w", encoding="utf-8") for p in paths]
    lines_file = open(outdir / f"{split.name}.lines", "w")
    too_long = []  # (words + 1, location, side) of valid/test lines
    max_words, ratio = split.clean if split.clean is not None else (None, None)
    try:
        with tqdm(total=total, desc=f"normalise {split.name}", unit=" pairs", mininterval=2) as bar:
            for chunk, locs in results:
                for (src, tgt, raw_src, raw_tgt), loc in zip(chunk, locs):
                    if not src or not tgt:
                        stats.dropped_empty += 1
                        if len(stats.empty_examples) < 5:
                            stats.empty_examples.append(f"line {loc[1]}" if len(split.files) == 1
                                                        else _where(split, loc))
                        continue
                    ls, lt = len(src.split()), len(tgt.split())
                    if max_positions is not None and max(ls, lt) + 1 > max_positions:
                        if split.name == "train":
                            stats.dropped_long += 1
                            if len(stats.long_examples) < 5:
                                stats.long_examples.append(_where(split, loc))
                            continue
                        too_long += [(n + 1, loc, side) for side, n in enumerate((ls, lt)) if n + 1 > max_positions]
                    if (max_words is not None and (ls > max_words or lt > max_words)) or (
                        ratio is not None and (ls > ratio * lt or lt > ratio * ls)
                    ):
                        stats.dropped_clean += 1
                        continue
                    for f, text in zip(files, (src, tgt, raw_src, raw_tgt)):
                        f.write(text + "\n")
                    lines_file.write(f"{loc[0]} {loc[1]}\n")
                    stats.kept += 1
                bar.update(len(chunk))
    finally:
        for f in files:
            f.close()
        lines_file.close()
    if too_long:
        raise _too_long_error(
            split, too_long, max_positions,
            lambda p: f"{p - 1} words, so at least {p} positions (one SentencePiece piece or more per word, "
                      "plus end-of-sentence)",
        )
    where = ", ".join(f"{s} / {t}" for s, t in split.files)
    if invalid_utf8 == "replace":
        for path in (p for pair in split.files for p in pair):
            scan = scans.get(Path(path))
            if scan is not None and scan.bad_utf8_lines:
                stats.replaced_utf8[str(path)] = scan.bad_utf8_lines
                logger.warning(
                    "%s: replaced undecodable bytes with U+FFFD in %d of the %d lines of %s "
                    "(--invalid-utf8 replace; first at %s)",
                    split.name, scan.bad_utf8_lines, scan.lines, path, scan.first_bad_utf8,
                )
    if stats.dropped_empty:
        logger.warning(
            "%s: dropped %d sentence pairs with an empty side (%s; first at %s)",
            split.name, stats.dropped_empty, where, ", ".join(stats.empty_examples),
        )
    if stats.dropped_clean:
        limits = ([f"longer than {max_words} words"] if max_words is not None else []) + (
            [f"with a length ratio above {ratio:g}"] if ratio is not None else [])
        logger.info("%s: dropped %d pairs %s", split.name, stats.dropped_clean, " or ".join(limits))
    if stats.kept == 0:
        raise CorpusError(f"{split.name}: no usable sentence pairs in {where}")
    return stats


def _normalize_located(args):
    pairs, src_lang, tgt_lang, locs = args
    return _normalize_chunk((pairs, src_lang, tgt_lang)), locs


def limit_positions(
    split: Split, text: Path, src_lang: str, tgt_lang: str, max_positions: int, stats: SplitStats
) -> None:
    """Check the SentencePiece-encoded ``text/<split>.<lang>`` against ``max_positions``
    (pieces plus end-of-sentence, the size fairseq gives a sentence): for ``train``, drop the
    pairs with a longer side (counted in ``stats.dropped_long``); for another split, raise
    :class:`CorpusError` naming the first too-long line, as references keep every line."""
    train = split.name == "train"
    encoded = [text / f"{split.name}.{lang}" for lang in (src_lang, tgt_lang)]
    inputs = [open(p, encoding="utf-8") for p in encoded] + [open(text / f"{split.name}.lines")]
    outputs = [open(p.with_name(p.name + ".kept"), "w", encoding="utf-8") for p in encoded] if train else []
    too_long = []
    dropped = 0
    try:
        for src, tgt, loc in zip(*inputs):
            sizes = (len(src.split()) + 1, len(tgt.split()) + 1)
            if max(sizes) <= max_positions:
                for f, line in zip(outputs, (src, tgt)):
                    f.write(line)
                continue
            location = tuple(int(x) for x in loc.split())
            if train:
                dropped += 1
                if len(stats.long_examples) < 5:
                    stats.long_examples.append(_where(split, location))
            else:
                too_long += [(n, location, side) for side, n in enumerate(sizes) if n > max_positions]
    finally:
        for f in inputs + outputs:
            f.close()
    if too_long:
        raise _too_long_error(
            split, too_long, max_positions,
            lambda p: f"{p - 1} SentencePiece pieces, {p} positions with the end-of-sentence token",
        )
    if train:
        for p in encoded:
            p.with_name(p.name + ".kept").replace(p)
        stats.dropped_long += dropped
        stats.kept -= dropped
        if stats.dropped_long:
            logger.warning(
                "%s: dropped %d pairs longer than --max-positions %d (SentencePiece pieces plus "
                "end-of-sentence; first at %s)",
                split.name, stats.dropped_long, max_positions, ", ".join(stats.long_examples),
            )
        if stats.kept == 0:
            raise CorpusError(f"{split.name}: no sentence pairs fit --max-positions {max_positions}")


# --- SentencePiece ----------------------------------------------------------------------------


def train_sentencepiece(inputs: Sequence[Path], model_prefix: Path, vocab_size: int,
                        max_sentences: int = 10_000_000) -> Path:
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


#: Multi30k (task 1): the raw file name of each split, ``<name>.<lang>``.
MULTI30K_FILES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def multi30k_splits(raw: Path, src: str, tgt: str, max_ratio: Optional[float] = None) -> List[Split]:
    """The three splits of a Multi30k folder ``raw`` for the pair ``src-tgt`` (``max_ratio``: the
    clean-corpus-n length ratio filter of the training split, None for none)."""
    return [
        Split(split, [(raw / f"{name}.{src}", raw / f"{name}.{tgt}")],
              clean=(None, max_ratio) if split == "train" and max_ratio is not None else None)
        for split, name in MULTI30K_FILES.items()
    ]


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
    invalid_utf8: str = "strict",
    max_non_text: float = MAX_NON_TEXT,
    max_positions: Optional[int] = None,
) -> Dict[str, SplitStats]:
    """Run the whole pipeline (module docstring); return each split's counts.

    ``invalid_utf8``: ``"strict"`` (undecodable bytes are an error naming file, line and byte)
    or ``"replace"`` (U+FFFD, counted per file); ``max_non_text``: the largest fraction of a
    file's lines with undecodable bytes or control characters; ``max_positions``: the longest
    sentence the model will take, in pieces plus end-of-sentence (None: no limit)."""
    destdir = Path(destdir)
    if destdir.exists() and any(destdir.iterdir()) and not force:
        raise FileExistsError(
            f"{destdir} already exists and is not empty; pass --force to rebuild it "
            "(the old folder is replaced only once the new one is complete)"
        )
    if max_positions is not None and max_positions < 2:
        raise ValueError(f"max_positions must be at least 2 (one piece and end-of-sentence), got {max_positions}")
    scans = check_splits(splits, invalid_utf8, max_non_text)
    # an existing destination is checked above: an empty one or, with force, any is replaced
    with staged_folder(destdir, replace=True) as work:
        text = work / "text"
        text.mkdir()
        with Pool(workers) if workers > 1 else nullcontext() as pool:
            stats = {
                s.name: normalize_split(s, src_lang, tgt_lang, text, pool or None, scans, invalid_utf8, max_positions)
                for s in splits
            }

        logger.info("training a joint SentencePiece BPE model, %d pieces", vocab_size)
        out = PreparedData(work)
        sp_model = train_sentencepiece(
            [text / f"train.norm.{src_lang}", text / f"train.norm.{tgt_lang}"], out.spm_model.with_suffix(""),
            vocab_size
        )
        out.ref_dir.mkdir()
        for split in splits:
            for lang in (src_lang, tgt_lang):
                encode_file(sp_model, text / f"{split.name}.norm.{lang}", text / f"{split.name}.{lang}")
            if max_positions is not None:
                limit_positions(split, text, src_lang, tgt_lang, max_positions, stats[split.name])
            for lang in (src_lang, tgt_lang):
                if split.name != "train":
                    shutil.copy(text / f"{split.name}.raw.{lang}", out.ref(split.name, lang))
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
            "invalid_utf8": invalid_utf8,
            "max_non_text": max_non_text,
            "max_positions": max_positions,
            "splits": {
                s.name: {
                    "files": [[str(a), str(b)] for a, b in s.files],
                    "kept": stats[s.name].kept,
                    "dropped_empty": stats[s.name].dropped_empty,
                    "dropped_clean": stats[s.name].dropped_clean,
                    "dropped_long": stats[s.name].dropped_long,
                    "replaced_utf8": stats[s.name].replaced_utf8,
                    "clean": s.clean,
                }
                for s in splits
            },
            **(extra_info or {}),
        }
        out.info_file.write_text(json.dumps(info, indent=2) + "\n")
    return stats


# --- downloads and archives --------------------------------------------------------------------


def download(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` (kept if already there), through a temporary file."""
    from tqdm import tqdm

    dest = Path(dest)
    if dest.exists():
        logger.info("%s already downloaded", dest)
        return dest

    def fill(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))

    try:
        write_atomic(dest, fill)
    except OSError as e:
        raise ConnectionError(
            f"could not download {url} ({e}); without internet access, point the script at a "
            "local copy of the data instead (see --help)"
        ) from e
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
    with open(sgm, "rb") as fin, open(dest, "w", encoding="utf-8") as fout:
        for number, raw in enumerate(fin, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{sgm} is not valid UTF-8 at line {number}, byte {e.start + 1}: "
                    f"{raw[e.start:e.end]!r} ({e.reason})"
                ) from None
            match = _SEG.search(line)
            if match:
                fout.write(match.group(1).replace("\u2019", "'") + "\n")
    return dest
