"""Translation evaluation: fairseq-generate, then sacreBLEU and tokenized BLEU.

:func:`evaluate` runs the real ``fairseq-generate`` (beam 4 by default, as the paper) on a
split of a folder written by :mod:`mt_tools.corpus`, with ``--required-batch-size-multiple 1``
so that no sentence is dropped (fairseq issue 5036), checks that there is exactly one
hypothesis per reference, and scores:

* **sacreBLEU** on detokenized text (SentencePiece pieces decoded) against the original
  references, with its signature;
* **tokenized BLEU** as in the WMT14 papers (Vaswani et al.; Ott et al.'s
  ``compound_split_bleu.sh``): hypotheses and references Moses-tokenized, ``A-B`` split into
  ``A ##AT##-##AT## B``, BLEU on whitespace tokens (multi-bleu).

Checkpoints can be averaged first (:func:`average_checkpoints`, as fairseq's
``scripts/average_checkpoints.py``), with torch's safe (weights-only) loading.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from resmlp_core.checkpoint import load_weights_only
from resmlp_core.io import save_atomic

from .layout import PreparedData

logger = logging.getLogger(__name__)

_GEN_SUMMARY = re.compile(
    r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s, ([\d.]+) tokens/s\)"
)
_COMPOUND = re.compile(r"(\S)-(\S)")


class EvaluationError(RuntimeError):
    pass


@dataclass
class EvalResult:
    split: str
    sentences: int
    sacrebleu: float
    sacrebleu_signature: str
    tok_bleu: float
    tok_bleu_compound_split: float
    generation_seconds: float
    sentences_per_second: float
    tokens_per_second: float
    peak_rss_mb: float
    command: List[str]
    samples: List[Dict[str, str]] = field(default_factory=list)


def plugin_dir() -> Path:
    """The folder of the fairseq plugin, for ``--user-dir`` (found without importing fairseq)."""
    return Path(importlib.util.find_spec("resmlp_mt").submodule_search_locations[0])


def last_checkpoints(save_dir: Path, n: int) -> List[Path]:
    """The ``n`` newest of fairseq's numbered checkpoints in ``save_dir``: update-based
    (``checkpoint_E_U.pt``) if any, else epoch-based (``checkpointE.pt``)."""
    save_dir = Path(save_dir)
    by_update = {int(m.group(1)): p for p in save_dir.glob("checkpoint_*_*.pt")
                 if (m := re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", p.name))}
    by_epoch = {int(m.group(1)): p for p in save_dir.glob("checkpoint*.pt")
                if (m := re.fullmatch(r"checkpoint(\d+)\.pt", p.name))}
    found = by_update or by_epoch
    if len(found) < n:
        raise EvaluationError(f"asked to average the last {n} checkpoints but {save_dir} holds {len(found)} "
                              "numbered ones")
    return [found[k] for k in sorted(found)[-n:]]


def average_checkpoints(paths: Sequence[Path], output: Path) -> Path:
    """Average the model parameters of ``paths`` into ``output`` (the other entries of the
    last checkpoint are kept). Loading is weights-only: no code is unpickled.

    Tied tensors stay tied: keys that share one storage in the last checkpoint (the shared
    embeddings and the output projection tied to them) are averaged once and saved as one
    tensor under all their keys, as in a trained checkpoint, not as equal copies."""
    import resmlp_mt  # noqa: F401  (allows argparse.Namespace in safe loading)

    total: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    state = None
    for path in paths:
        state = load_weights_only(path, error=EvaluationError)
        for key, value in state["model"].items():
            value = value.double() if value.is_floating_point() else value
            if key not in total:
                total[key] = value.clone()
            elif value.is_floating_point():
                total[key] += value
    assert state is not None
    tied_to: Dict[str, str] = {}  # key -> the first key of its storage, in the last checkpoint
    first_of: Dict[tuple, str] = {}
    for key, value in state["model"].items():
        if value.numel():
            tied_to[key] = first_of.setdefault((value.data_ptr(), value.dtype, value.shape, value.stride()), key)
    mean = {k: (v / len(paths)).to(state["model"][k].dtype) if v.is_floating_point() else v
            for k, v in total.items() if tied_to.get(k, k) == k}
    averaged = collections.OrderedDict((k, mean[tied_to.get(k, k)]) for k in total)
    state["model"] = averaged
    save_atomic(state, output)
    logger.info("averaged %d checkpoints into %s: %s", len(paths), output, ", ".join(p.name for p in paths))
    return output


@dataclass
class Measured:
    """A finished command: exit status, output, wall-clock seconds and peak resident memory."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float


def run_measured(cmd: Sequence[str], env: Optional[dict] = None, stream_stderr: bool = False) -> Measured:
    """Run ``cmd`` and measure its wall-clock time and peak RSS (``wait4`` rusage of that one
    child). ``stream_stderr`` passes stderr through live (progress bars) instead of capturing it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=None if stream_stderr else err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, out.read(), err.read(), seconds, usage.ru_maxrss / 1024)


def read_lines(path: Path) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str, compound_split: bool) -> float:
    """BLEU on Moses-tokenized text (multi-bleu), optionally with compound splitting."""
    import sacrebleu
    from sacremoses import MosesTokenizer

    tok = MosesTokenizer(lang)

    def prep(line: str) -> str:
        line = tok.tokenize(line, escape=False, return_str=True)
        return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line) if compound_split else line

    return sacrebleu.corpus_bleu([prep(h) for h in hyps], [[prep(r) for r in refs]], tokenize="none", force=True).score


def parse_generate_output(text: str) -> Dict[int, str]:
    """``{sentence id: detokenized hypothesis}`` from fairseq-generate's ``D-`` lines."""
    hyps: Dict[int, str] = {}
    for line in text.splitlines():
        if line.startswith("D-"):
            head, _score, *rest = line.split("\t")
            hyps[int(head[2:])] = rest[0] if rest else ""
    return hyps


@dataclass
class Translations:
    """One split translated by :func:`translate_split`: ``hypotheses`` (detokenized),
    ``references`` and ``sources`` (the original text), line by line; the target language; the
    generation's timing (fairseq's own timer when it printed one) and peak memory; the command."""

    split: str
    tgt_lang: str
    hypotheses: List[str]
    references: List[str]
    sources: List[str]
    generation_seconds: float
    sentences_per_second: float
    tokens_per_second: float
    peak_rss_mb: float
    command: List[str]


def translate_split(
    data: Path,
    checkpoint: Path,
    split: str = "test",
    beam: int = 4,
    lenpen: float = 1.0,
    batch_size: int = 128,
    user_dir: Optional[Path] = None,
    extra_args: Sequence[str] = (),
    threads: Optional[int] = None,
) -> Translations:
    """Translate ``split`` of ``data`` with ``checkpoint`` through ``fairseq-generate`` (module
    docstring): one hypothesis per reference, or :class:`EvaluationError`."""
    data, checkpoint = Path(data), Path(checkpoint)
    prepared = PreparedData(data)
    if not prepared.is_prepared():
        raise EvaluationError(f"{prepared.info_file} not found: evaluate a folder written by scripts/prepare_*.py")
    info = prepared.info()
    src_lang, tgt_lang = info["src_lang"], info["tgt_lang"]
    ref_file = prepared.ref(split, tgt_lang)
    src_file = prepared.ref(split, src_lang)
    if not ref_file.exists():
        raise EvaluationError(f"no references for split {split!r}: {ref_file} not found")
    if not checkpoint.is_file():
        raise EvaluationError(f"checkpoint not found: {checkpoint}")
    refs, sources = read_lines(ref_file), read_lines(src_file)

    user_dir = Path(user_dir or plugin_dir())
    cmd = [
        sys.executable, "-m", "fairseq_cli.generate", str(data),
        "--user-dir", str(user_dir), "--path", str(checkpoint), "--gen-subset", split,
        "--beam", str(beam), "--lenpen", str(lenpen), "--batch-size", str(batch_size),
        "--required-batch-size-multiple", "1", "--post-process", "sentencepiece",
        "--source-lang", src_lang, "--target-lang", tgt_lang, *extra_args,
    ]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    logger.info("running: %s", " ".join(cmd))
    result = run_measured(cmd, env=env)
    if result.returncode != 0:
        raise EvaluationError(f"fairseq-generate failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    hyps_by_id = parse_generate_output(result.stdout)
    if len(hyps_by_id) != len(refs) or set(hyps_by_id) != set(range(len(refs))):
        missing = sorted(set(range(len(refs))) - set(hyps_by_id))[:10]
        raise EvaluationError(
            f"fairseq-generate returned {len(hyps_by_id)} hypotheses for {len(refs)} references "
            f"in {ref_file} (first missing ids: {missing}); refusing to score a partial test set"
        )
    summary = _GEN_SUMMARY.search(result.stdout + result.stderr)
    gen_seconds, sent_s, tok_s = (
        (float(summary.group(3)), float(summary.group(4)), float(summary.group(5)))
        if summary
        else (result.seconds, len(refs) / result.seconds, float("nan"))
    )
    return Translations(split, tgt_lang, [hyps_by_id[i] for i in range(len(refs))], refs, sources, gen_seconds,
                        sent_s, tok_s, result.peak_rss_mb, cmd)


def evaluate(
    data: Path,
    checkpoint: Path,
    split: str = "test",
    beam: int = 4,
    lenpen: float = 1.0,
    batch_size: int = 128,
    user_dir: Optional[Path] = None,
    extra_args: Sequence[str] = (),
    num_samples: int = 5,
    threads: Optional[int] = None,
) -> EvalResult:
    """Translate ``split`` of ``data`` with ``checkpoint`` (:func:`translate_split`) and score it
    (module docstring)."""
    import sacrebleu

    t = translate_split(data, checkpoint, split, beam, lenpen, batch_size, user_dir, extra_args, threads)
    hyps, refs = t.hypotheses, t.references
    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score(hyps, [refs])
    return EvalResult(
        split=split,
        sentences=len(refs),
        sacrebleu=round(score.score, 2),
        sacrebleu_signature=str(bleu.get_signature()),
        tok_bleu=round(tokenized_bleu(hyps, refs, t.tgt_lang, compound_split=False), 2),
        tok_bleu_compound_split=round(tokenized_bleu(hyps, refs, t.tgt_lang, compound_split=True), 2),
        generation_seconds=t.generation_seconds,
        sentences_per_second=t.sentences_per_second,
        tokens_per_second=t.tokens_per_second,
        peak_rss_mb=round(t.peak_rss_mb, 1),
        command=t.command,
        samples=[{"source": t.sources[i], "reference": refs[i], "hypothesis": hyps[i]}
                 for i in range(min(num_samples, len(refs)))],
    )


def format_result(result: EvalResult) -> str:
    lines = [
        f"{result.split}: {result.sentences} sentences",
        f"  sacreBLEU (detokenized)          {result.sacrebleu:6.2f}   {result.sacrebleu_signature}",
        f"  tokenized BLEU                   {result.tok_bleu:6.2f}",
        f"  tokenized BLEU, compound split   {result.tok_bleu_compound_split:6.2f}",
        f"  generation: {result.sentences_per_second:.1f} sentences/s, {result.tokens_per_second:.0f} tokens/s",
    ]
    for s in result.samples:
        lines += ["", f"  SRC  {s['source']}", f"  REF  {s['reference']}", f"  HYP  {s['hypothesis']}"]
    return "\n".join(lines)


def result_dict(result: EvalResult) -> dict:
    return asdict(result)
