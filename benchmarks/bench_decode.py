#!/usr/bin/env python
"""Decoding benchmark: ResMLP against a Transformer of the same size, per engine,
at batch 128 (throughput) and batch 1 (latency), plus an equal-output-length measurement.

    python -m benchmarks.bench_decode --resmlp checkpoints/multi30k.en-de.resmlp/checkpoint_best.pt \\
        --transformer checkpoints/multi30k.en-de.transformer/checkpoint_best.pt    # or: make bench-decode
    python -m benchmarks.bench_decode --resmlp R.pt --transformer T.pt --quick        # smoke test, seconds

Rows (beam 4 everywhere; ``--resmlp-beam N``: ResMLP's rows at beam N outside the equal-length rows,
e.g. a distilled student decoded greedily against its teacher at beam 4):

* ResMLP, ``fairseq-generate`` (a subprocess, :func:`mt_tools.evaluate.evaluate`);
* ResMLP, Python API ``Translator.translate(engine="fairseq")`` (fairseq's SequenceGenerator);
* ResMLP, Python API ``engine="fast"`` (:mod:`resmlp_mt.fast_generate`, folded decoder),
  float32 and int8 (``Translator.quantize()``);
* ResMLP, Python API ``engine="onnx"`` (the decoder step in ONNX Runtime,
  :mod:`resmlp_mt.onnx_decoder`): int8 at batch 128, float32 and int8 at batch 1;
* Transformer, ``fairseq-generate``;
* Transformer, CTranslate2 (converted from the fairseq checkpoint), float32 and int8;
* with ``--vocabulary-map VMAP`` (a lexical shortlist, :mod:`resmlp_mt.vocabulary_map`), both
  systems again with that map, int8, at batch 128 and 1: ResMLP's ONNX engine
  (``Translator.use_vocabulary_map``) and CTranslate2 converted with it (``use_vmap``); their
  ratios are to each other.

Batch 128 on the whole split (``--sentences`` to cut it); batch 1 on its first
``--latency-sentences`` sentences for every row but the API ``engine="fairseq"`` one; then every
system forced to emit exactly ``--equal-length`` L target tokens per sentence (fairseq:
``--min-len L --max-len-a 0 --max-len-b L``, i.e. L pieces plus the end-of-sentence; the fast path:
``min_len = max_len_b = L``; CTranslate2, which cannot force an end-of-sentence at a position:
``min_decoding_length = max_decoding_length = L + 1``, the same L + 1 decoder steps), so that a
difference in output length cannot pass for speed. The lengths are checked hypothesis by
hypothesis. Both systems also run that through fairseq's SequenceGenerator in this process
(warmed up, unlike a fresh fairseq-generate process), the same search code for both.

Figures per row: sentences/s; generated target tokens/s, where a token is a SentencePiece piece
of the output or its end-of-sentence, i.e. one decoder step (fairseq-generate: its own count;
API: the tokens handed to the decoder; CTranslate2: the output pieces with ``return_end_token``);
mean output length in tokens; sacreBLEU (signature recorded) on the sentences the row translated;
the ratio to the CTranslate2 int8 row of the same batch size; batch-1 rows also give ms per
sentence. Timing: fairseq-generate rows use fairseq's own generation timer (the search only:
no process start, model or data loading); in-process rows time the call, text in to text out
(normalisation, SentencePiece, batching, search, detokenisation). Rounds are interleaved (round 1
runs every row, then round 2, ...) and the medians are reported; a ratio of two rows is the median of
their ratios within each round (:func:`round_ratio`). With ``--threads 1``, the headline pairs,
ResMLP's ONNX int8 engine and CTranslate2 int8 at each batch size and length (:data:`INTERLEAVED`),
decode in turn within a round, batch by batch (the sentences sorted by length and cut into batches,
as both engines do; batch 1: sentence by sentence), so that their ratio compares the engines seconds
apart (with more threads, one engine's idle worker threads would still spin while the other runs).
The calls are timed with ``time.perf_counter`` rather than ``torch.utils.benchmark.Timer``, which
would warm up before each timed call and drop the translations that the row's BLEU and output
length are computed from.
In-process rows run in this process with ``torch.set_num_threads(--threads)``, subprocesses get
``OMP_NUM_THREADS``, CTranslate2 ``intra_threads``. Run it alone on the machine.

Writes ``OUT.json`` (machine, versions, settings, checkpoints with their update counts, every
round of every row) and ``OUT.md`` (the tables), prints the tables. The ResMLP model folder
(``scripts/export_model.py``), the CTranslate2 conversion and data subsets go to ``--work-dir``.
Without ``ctranslate2`` (``pip install -r requirements-bench.txt``), its rows are skipped with a
note.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.common import read_checkpoint, repo_relative, write_result
import mt_tools.evaluate as mt_evaluate
from mt_tools.layout import PreparedData
from resmlp_core.checkpoint import count_parameters
import resmlp_mt  # noqa: F401  (registers the model; safe loading of fairseq checkpoints)

REPO = Path(__file__).resolve().parents[1]

USER_DIR = REPO / "resmlp_mt"
VMAP_ENGINE = "API engine=onnx, vocabulary map"
GEN_SUMMARY = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\)")
GROUPS = {
    "batch": "Throughput, batch {batch}",
    "latency": "Latency, batch 1",
    "equal": "Equal output length: every hypothesis {length} pieces + end-of-sentence",
    "equal_latency": "Equal output length, batch 1: every hypothesis {length} pieces + end-of-sentence",
}
EQUAL_GROUPS = ("equal", "equal_latency")
SPLIT_PARTS = {"decoder_step_graph": "decoder step graph (ONNX Runtime)", "source_graph": "source graph (encoder, "
               "cross-attention keys and values)", "search_and_python": "beam search and Python (text in, text out)"}
ONE_AT_A_TIME = ("latency", "equal_latency")  # batch 1: each sentence timed on its own


def say(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Inputs


def read_lines(path: Path) -> List[str]:
    return mt_evaluate.read_lines(path)


def checkpoint_info(path: Path) -> dict:
    """Architecture, update count, parameters (tied tensors once:
    :func:`resmlp_core.checkpoint.count_parameters`) of a fairseq checkpoint."""
    state = read_checkpoint(path)
    model_cfg = state["cfg"]["model"]
    params = count_parameters(state["model"])
    history = state.get("optimizer_history") or [{}]
    get = (lambda k: model_cfg.get(k)) if isinstance(model_cfg, dict) else (lambda k: getattr(model_cfg, k, None))
    return {
        "path": str(path),
        "arch": get("arch") or get("_name"),
        "updates": history[-1].get("num_updates"),
        "parameters": params,
        "max_target_positions": get("max_target_positions"),
        "encoder_embed_dim": get("encoder_embed_dim"),
        "encoder_layers": get("encoder_layers"),
        "decoder_layers": get("decoder_layers"),
    }


def is_transformer(arch: Optional[str]) -> bool:
    """Whether a checkpoint's architecture (:func:`checkpoint_info`) is one of fairseq's
    ``transformer`` family, which CTranslate2 converts."""
    return arch is not None and "transformer" in str(arch)


def make_subset(data: Path, split: str, n: int, dest: Path) -> Path:
    """A data folder holding the first ``n`` sentences of ``split`` (binarized data, references,
    dictionaries, SentencePiece model, prep.json), so that fairseq-generate translates exactly
    the sentences the in-process rows translate. ``data`` itself when it has ``n`` or fewer."""
    from fairseq.data import data_utils, indexed_dataset

    source, subset = PreparedData(data), PreparedData(dest)
    info = source.info()
    src, tgt = info["src_lang"], info["tgt_lang"]
    total = len(read_lines(source.ref(split, tgt)))
    if n >= total:
        return data
    if dest.exists():
        shutil.rmtree(dest)
    subset.ref_dir.mkdir(parents=True)
    for get in (lambda d: d.info_file, lambda d: d.dictionary(src), lambda d: d.dictionary(tgt), lambda d: d.spm_model):
        shutil.copyfile(get(source), get(subset))
    for lang in (src, tgt):
        lines = read_lines(source.ref(split, lang))[:n]
        subset.ref(split, lang).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        prefix = str(source.binary_prefix(split, src, tgt, lang))
        impl = indexed_dataset.infer_dataset_impl(prefix)
        dataset = data_utils.load_indexed_dataset(prefix, None, dataset_impl=impl)
        vocab = len(read_lines(source.dictionary(lang))) + 4
        out = str(subset.binary_prefix(split, src, tgt, lang))
        builder = indexed_dataset.make_builder(out + ".bin", impl=impl, vocab_size=vocab)
        for i in range(n):
            builder.add_item(dataset[i])
        builder.finalize(out + ".idx")
    return dest


@dataclass
class TextSet:
    """The sentences one group of rows translates: a data folder for fairseq-generate, the
    same source lines and references for the in-process rows."""

    data: Path
    sources: List[str]
    refs: List[str]


def text_set(data: Path, split: str) -> TextSet:
    prepared = PreparedData(data)
    info = prepared.info()
    return TextSet(data, read_lines(prepared.ref(split, info["src_lang"])),
                   read_lines(prepared.ref(split, info["tgt_lang"])))


# ----------------------------------------------------------------------------------------------
# One measurement


@dataclass
class Measurement:
    seconds: float  # timed part (see the module docstring)
    hypotheses: List[str]  # detokenized, in input order
    lengths: List[int]  # generated tokens per hypothesis (pieces + end-of-sentence), any order
    latencies_ms: Optional[List[float]] = None  # batch 1 in process: per sentence
    rates: Optional[Dict[str, float]] = None  # fairseq-generate's own sentences/s and tokens/s
    extra: dict = field(default_factory=dict)

    @property
    def sentences(self) -> int:
        return len(self.hypotheses)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def summary(self) -> dict:
        sent_s = self.rates["sentences_per_second"] if self.rates else self.sentences / self.seconds
        tok_s = self.rates["tokens_per_second"] if self.rates else self.tokens / self.seconds
        out = {"seconds": round(self.seconds, 4), "sentences": self.sentences, "tokens": self.tokens,
               "sentences_per_second": sent_s, "tokens_per_second": tok_s,
               "latency_ms_mean": 1000.0 / sent_s}
        if self.latencies_ms:
            out["latency_ms_median"] = statistics.median(self.latencies_ms)
        return out


def sacrebleu_score(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score(list(hyps), [list(refs)])
    return {"sacrebleu": round(score.score, 2), "sacrebleu_signature": str(bleu.get_signature())}


def digest(hyps: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(hyps).encode("utf-8")).hexdigest()[:16]


@contextmanager
def captured_generate_output():
    """Keep the output of the fairseq-generate run that :func:`mt_tools.evaluate.evaluate`
    starts (it returns the scores, not the hypotheses' tokens): ``box["run"]`` is its
    :class:`mt_tools.evaluate.Measured`."""
    original, box = mt_evaluate.run_measured, {}

    def run(cmd, env=None, stream_stderr=False):
        box["run"] = original(cmd, env=env, stream_stderr=stream_stderr)
        return box["run"]

    mt_evaluate.run_measured = run
    try:
        yield box
    finally:
        mt_evaluate.run_measured = original


def generate_lengths(stdout: str) -> Dict[int, int]:
    """``{sentence id: tokens of its hypothesis}`` from fairseq-generate's ``P-`` lines (one
    positional score per token, end-of-sentence included)."""
    lengths = {}
    for line in stdout.splitlines():
        if line.startswith("P-"):
            head, _, scores = line.partition("\t")
            lengths[int(head[2:])] = len(scores.split())
    return lengths


def run_fairseq_generate(ts: TextSet, checkpoint: Path, split: str, beam: int, batch: int, threads: int,
                         extra_args: Sequence[str] = ()) -> Measurement:
    with captured_generate_output() as box:
        result = mt_evaluate.evaluate(ts.data, checkpoint, split=split, beam=beam, batch_size=batch, user_dir=USER_DIR,
                                      extra_args=list(extra_args), num_samples=0, threads=threads)
    stdout = box["run"].stdout
    hyps_by_id = mt_evaluate.parse_generate_output(stdout)
    lengths = generate_lengths(stdout)
    summary = GEN_SUMMARY.search(stdout + box["run"].stderr)
    if summary is None or set(lengths) != set(hyps_by_id):
        raise RuntimeError(f"unexpected fairseq-generate output for {checkpoint}: no summary line or P- lines")
    reported = int(summary.group(2).replace(",", ""))
    if reported != sum(lengths.values()):
        raise RuntimeError(f"fairseq-generate reports {reported} tokens, its P- lines {sum(lengths.values())}")
    details = {k: v for k, v in mt_evaluate.result_dict(result).items() if k != "samples"}
    details["process_seconds"] = round(box["run"].seconds, 3)
    return Measurement(
        seconds=result.generation_seconds,
        hypotheses=[hyps_by_id[i] for i in range(len(hyps_by_id))],
        lengths=[lengths[i] for i in range(len(lengths))],
        rates={"sentences_per_second": result.sentences_per_second, "tokens_per_second": result.tokens_per_second},
        extra={"fairseq_generate": details},
    )


@contextmanager
def counting_decode(translator):
    """Record the number of tokens (end-of-sentence included) of every hypothesis the
    translator decodes: both engines hand each best hypothesis's tokens to ``decode``."""
    counts: List[int] = []
    original = translator.decode

    def decode(tokens):
        counts.append(int(tokens.numel()))
        return original(tokens)

    translator.decode = decode
    try:
        yield counts
    finally:
        del translator.decode


def run_api(translator, sources: List[str], engine: str, batch: int, beam: int,
            length: Optional[int] = None) -> Measurement:
    """The API's ``engine`` at ``batch`` (1: each sentence timed on its own); with ``length``,
    ``min_len = max_len_b = length``, ``max_len_a = 0``, and every hypothesis checked to have
    ``length`` pieces + end-of-sentence."""
    options = {} if length is None else dict(min_len=length, max_len_a=0, max_len_b=length)
    with counting_decode(translator) as counts:
        if batch == 1:
            hyps, latencies = [], []
            for sentence in sources:
                start = time.perf_counter()
                hyps.append(translator.translate([sentence], beam=beam, batch_size=1, engine=engine, **options)[0])
                latencies.append(1000 * (time.perf_counter() - start))
            measurement = Measurement(sum(latencies) / 1000, hyps, list(counts), latencies_ms=latencies)
        else:
            start = time.perf_counter()
            hyps = translator.translate(sources, beam=beam, batch_size=batch, engine=engine, **options)
            measurement = Measurement(time.perf_counter() - start, hyps, list(counts))
    if length is not None and any(n != length + 1 for n in counts):
        raise RuntimeError(f"{engine}: hypotheses of {sorted(set(counts))} tokens, not {length} + end-of-sentence")
    return measurement


def onnx_time_split(translator, sources: List[str], beam: int) -> dict:
    """Where a batch-1 sentence's time goes in the API's ONNX engine (``translator`` as measured):
    one more pass of :func:`run_api` at batch 1 with the two ONNX Runtime sessions' runs timed
    (the decoder step graph, ``run_with_iobinding`` once per step; the source graph, ``run`` once
    per sentence); the rest is the beam search and the Python around it (text in, text out).
    Milliseconds per sentence, and decoder steps per sentence."""
    model = translator._decoder("onnx")
    spent = {"decoder_step_graph": 0.0, "source_graph": 0.0}
    calls = dict.fromkeys(spent, 0)

    def timed(run, part):

        def run_timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start
                calls[part] += 1
        return run_timed

    model.session.run_with_iobinding = timed(model.session.run_with_iobinding, "decoder_step_graph")
    model.source_session.run = timed(model.source_session.run, "source_graph")
    try:
        total = run_api(translator, sources, "onnx", 1, beam).seconds
    finally:  # the sessions' own methods again
        del model.session.run_with_iobinding, model.source_session.run
    n = len(sources)
    parts = {**spent, "search_and_python": total - sum(spent.values())}
    return {"sentences": n, "steps_per_sentence": calls["decoder_step_graph"] / n, "total_ms": 1000 * total / n,
            "ms": {part: 1000 * seconds / n for part, seconds in parts.items()}}


def run_generator_fixed_length(hub, sources: List[str], batch: int, beam: int, length: int,
                               normalize: Optional[Callable[[str], str]] = None) -> Measurement:
    """fairseq's SequenceGenerator in this process (a fairseq hub interface: the ResMLP
    ``Translator``, which normalises itself, or the Transformer's, given ``normalize``) with
    ``min_len = max_len_b = length``, ``max_len_a = 0``."""
    hub.cfg.dataset.batch_size = batch
    options = dict(beam=beam, min_len=length, max_len_a=0, max_len_b=length)
    with counting_decode(hub) as counts:
        start = time.perf_counter()
        if normalize is None:
            hyps = hub.translate(sources, batch_size=batch, engine="fairseq", **options)
        else:
            hyps = hub.sample([normalize(s) for s in sources], **options)
        return Measurement(time.perf_counter() - start, hyps, list(counts))


class CT2System:
    """The Transformer converted to CTranslate2, fed what fairseq is fed: the normalised source's
    SentencePiece pieces (the converter sets ``add_source_eos``: CTranslate2 appends ``</s>``),
    outputs detokenized as fairseq-generate does."""

    EOS = "</s>"

    def __init__(self, model_dir: Path, spm_model: Path, src_lang: str, compute_type: str, threads: int, max_len: int,
                 use_vmap: bool = False):
        import ctranslate2
        import sentencepiece

        from resmlp_core.text import normalize

        self.translator = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type,
                                                 intra_threads=threads, inter_threads=1)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
        self.normalize = lambda s: normalize(s, src_lang)
        self.max_len = max_len  # fairseq's: min(max_len_b, max target positions - 1) pieces, then </s>
        self.use_vmap = use_vmap  # the vocabulary map converted into the model (--vocabulary-map)

    def _translate(self, sentences: List[str], batch: int, beam: int, length: Optional[int]):
        from fairseq.data.data_utils import post_process

        pieces = [self.sp.encode(self.normalize(s), out_type=str) for s in sentences]
        # a limit of max_len + 1 tokens: the decoder steps fairseq takes at most (its last one
        # forced to </s>); with `length`, exactly length + 1 steps (no forced </s>, see docstring)
        steps = self.max_len + 1 if length is None else length + 1
        results = self.translator.translate_batch(
            pieces, beam_size=beam, max_batch_size=batch, return_end_token=True, max_decoding_length=steps,
            min_decoding_length=1 if length is None else steps, use_vmap=self.use_vmap)
        outputs = [r.hypotheses[0] for r in results]
        texts = [post_process(" ".join(p for p in out if p != self.EOS), "sentencepiece") for out in outputs]
        return texts, [len(out) for out in outputs]

    def run(self, sentences: List[str], batch: int, beam: int, length: Optional[int] = None) -> Measurement:
        if batch == 1:
            hyps, lengths, latencies = [], [], []
            for sentence in sentences:
                start = time.perf_counter()
                texts, counts = self._translate([sentence], 1, beam, length)
                latencies.append(1000 * (time.perf_counter() - start))
                hyps += texts
                lengths += counts
            return Measurement(sum(latencies) / 1000, hyps, lengths, latencies_ms=latencies)
        start = time.perf_counter()
        hyps, lengths = self._translate(sentences, batch, beam, length)
        measurement = Measurement(time.perf_counter() - start, hyps, lengths)
        if length is not None and any(n != length + 1 for n in lengths):
            raise RuntimeError(f"CTranslate2: hypotheses of {sorted(set(lengths))} tokens, not {length + 1}")
        return measurement


# ----------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    key: str
    group: str  # batch | latency | equal
    system: str
    engine: str
    precision: str
    batch: int
    texts: TextSet
    run: Callable[[List[str]], Measurement]  # the sentences (fairseq-generate rows: the folder's, ignored)
    rounds: List[dict] = field(default_factory=list)
    first: Optional[Measurement] = None
    hypotheses_stable: bool = True
    vocabulary_map: bool = False  # decodes with --vocabulary-map


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ctranslate2_version() -> Optional[str]:
    try:
        import ctranslate2
    except ImportError:
        return None
    return ctranslate2.__version__


def convert_ct2(checkpoint: Path, data: Path, out: Path, vmap: Optional[Path] = None) -> Path:
    """``ct2-fairseq-converter --model_path CKPT --data_dir DATA --user_dir resmlp_mt --output_dir OUT
    [--vocab_mapping VMAP]``, in process (float32 weights; the int8 rows quantize them on load,
    compute_type="int8")."""
    from ctranslate2.converters import FairseqConverter

    FairseqConverter(str(checkpoint), str(data), user_dir=str(USER_DIR)).convert(
        str(out), vmap=None if vmap is None else str(vmap), force=True)
    return out


def build_rows(args, work: Path, main_set: TextSet, latency_set: TextSet, info: dict,
               notes: List[str]) -> Tuple[List[Row], object]:
    """The benchmark's rows, and the ResMLP int8 ``Translator`` they share (for :func:`onnx_time_split`)."""
    from resmlp_mt import ResMLPTranslationModel

    prepared = PreparedData(args.data)
    prep = prepared.info()
    say(f"exporting the ResMLP checkpoint to a model folder ({work / 'resmlp-model'})")
    export_model = load_module("export_model", REPO / "scripts" / "export_model.py")
    folder = export_model.export(args.resmlp, args.data, work / "resmlp-model", force=True)
    fp32 = ResMLPTranslationModel.from_pretrained(str(folder))
    int8 = ResMLPTranslationModel.from_pretrained(str(folder)).quantize()

    ct2 = {}
    if args.equal_length > 0:
        from fairseq.models.transformer import TransformerModel

        from resmlp_core.text import normalize

        say("loading the Transformer for fairseq's SequenceGenerator in process")
        transformer = TransformerModel.from_pretrained(
            str(args.transformer.parent), checkpoint_file=args.transformer.name, data_name_or_path=str(args.data),
            bpe="sentencepiece", sentencepiece_model=str(prepared.spm_model))
        transformer.cfg.dataset.max_tokens = None
        transformer_normalize = lambda s: normalize(s, prep["src_lang"])  # noqa: E731
    if info["versions"]["ctranslate2"] is None:
        notes.append("CTranslate2 is not installed (pip install -r requirements-bench.txt): its rows are skipped, "
                     "and so are the ratios to it.")
        say("CTranslate2 is not installed: skipping its rows (pip install -r requirements-bench.txt)")
    else:
        say(f"converting the Transformer checkpoint to CTranslate2 ({work / 'ct2-transformer'})")
        ct2_dir = convert_ct2(args.transformer, args.data, work / "ct2-transformer")
        limit = min(200, (info["checkpoints"]["transformer"]["max_target_positions"] or 1024) - 1)
        for precision, compute_type in (("fp32", "float32"), ("int8", "int8")):
            ct2[precision] = CT2System(ct2_dir, prepared.spm_model, prep["src_lang"], compute_type, args.threads, limit)
        if args.vocabulary_map is not None:
            say(f"converting it again with the vocabulary map {args.vocabulary_map} ({work / 'ct2-transformer-vmap'})")
            vmap_dir = convert_ct2(args.transformer, args.data, work / "ct2-transformer-vmap", args.vocabulary_map)
            ct2_vmap = CT2System(vmap_dir, prepared.spm_model, prep["src_lang"], "int8", args.threads, limit,
                                 use_vmap=True)
    int8_vmap = (None if args.vocabulary_map is None
                 else ResMLPTranslationModel.from_pretrained(str(folder)).quantize().use_vocabulary_map(
                     args.vocabulary_map))

    beam, split, threads, B, L = args.beam, args.split, args.threads, args.batch_size, args.equal_length
    rbeam = args.resmlp_beam  # ResMLP's rows but the equal-length ones
    equal_args = ["--min-len", str(L), "--max-len-a", "0", "--max-len-b", str(L)]
    ms, ls = main_set, latency_set

    def fg(ckpt, ts, batch, extra=(), beam=beam):
        return lambda sources: run_fairseq_generate(ts, ckpt, split, beam, batch, threads, extra)

    rows = [
        Row("resmlp/fairseq-generate/fp32/b", "batch", "ResMLP", "fairseq-generate", "fp32", B, ms,
            fg(args.resmlp, ms, B, beam=rbeam)),
        Row("resmlp/api-fairseq/fp32/b", "batch", "ResMLP", "API engine=fairseq", "fp32", B, ms,
            lambda s: run_api(fp32, s, "fairseq", B, rbeam)),
        Row("resmlp/api-fast/fp32/b", "batch", "ResMLP", "API engine=fast", "fp32", B, ms,
            lambda s: run_api(fp32, s, "fast", B, rbeam)),
        Row("resmlp/api-fast/int8/b", "batch", "ResMLP", "API engine=fast", "int8", B, ms,
            lambda s: run_api(int8, s, "fast", B, rbeam)),
        Row("resmlp/api-onnx/int8/b", "batch", "ResMLP", "API engine=onnx", "int8", B, ms,
            lambda s: run_api(int8, s, "onnx", B, rbeam)),
        Row("transformer/fairseq-generate/fp32/b", "batch", "Transformer", "fairseq-generate", "fp32", B, ms,
            fg(args.transformer, ms, B)),
    ]
    for p, system in ct2.items():
        rows.append(Row(f"transformer/ctranslate2/{p}/b", "batch", "Transformer", "CTranslate2", p, B, ms,
                        lambda s, c=system: c.run(s, B, beam)))
    vmap_rows = []  # with the vocabulary map: ResMLP's ONNX int8 engine and CTranslate2 int8, at batch B and 1
    if int8_vmap is not None:
        for group, batch, texts, tag in (("batch", B, ms, "b"), ("latency", 1, ls, "1")):
            if group == "latency" and args.latency_sentences <= 0:
                continue
            vmap_rows.append(Row(f"resmlp/api-onnx-vmap/int8/{tag}", group, "ResMLP", VMAP_ENGINE, "int8", batch,
                                 texts, lambda s, b=batch: run_api(int8_vmap, s, "onnx", b, rbeam),
                                 vocabulary_map=True))
            if ct2:
                vmap_rows.append(Row(f"transformer/ctranslate2-vmap/int8/{tag}", group, "Transformer",
                                     "CTranslate2, vocabulary map", "int8", batch, texts,
                                     lambda s, b=batch: ct2_vmap.run(s, b, beam), vocabulary_map=True))
    rows += [r for r in vmap_rows if r.group == "batch"]
    if args.latency_sentences > 0:
        rows += [
            Row("resmlp/fairseq-generate/fp32/1", "latency", "ResMLP", "fairseq-generate", "fp32", 1, ls,
                fg(args.resmlp, ls, 1, beam=rbeam)),
            Row("resmlp/api-fast/fp32/1", "latency", "ResMLP", "API engine=fast", "fp32", 1, ls,
                lambda s: run_api(fp32, s, "fast", 1, rbeam)),
            Row("resmlp/api-fast/int8/1", "latency", "ResMLP", "API engine=fast", "int8", 1, ls,
                lambda s: run_api(int8, s, "fast", 1, rbeam)),
            Row("resmlp/api-onnx/fp32/1", "latency", "ResMLP", "API engine=onnx", "fp32", 1, ls,
                lambda s: run_api(fp32, s, "onnx", 1, rbeam)),
            Row("resmlp/api-onnx/int8/1", "latency", "ResMLP", "API engine=onnx", "int8", 1, ls,
                lambda s: run_api(int8, s, "onnx", 1, rbeam)),
            Row("transformer/fairseq-generate/fp32/1", "latency", "Transformer", "fairseq-generate", "fp32", 1, ls,
                fg(args.transformer, ls, 1)),
        ]
        for p, system in ct2.items():
            rows.append(Row(f"transformer/ctranslate2/{p}/1", "latency", "Transformer", "CTranslate2", p, 1, ls,
                            lambda s, c=system: c.run(s, 1, beam)))
        rows += [r for r in vmap_rows if r.group == "latency"]
    if L > 0:
        rows += [
            Row("resmlp/fairseq-generate/fp32/L", "equal", "ResMLP", "fairseq-generate", "fp32", B, ms,
                fg(args.resmlp, ms, B, equal_args)),
            Row("transformer/fairseq-generate/fp32/L", "equal", "Transformer", "fairseq-generate", "fp32", B, ms,
                fg(args.transformer, ms, B, equal_args)),
            Row("resmlp/sequence-generator/fp32/L", "equal", "ResMLP", "SequenceGenerator in process", "fp32", B, ms,
                lambda s: run_generator_fixed_length(fp32, s, B, beam, L)),
            Row("transformer/sequence-generator/fp32/L", "equal", "Transformer", "SequenceGenerator in process", "fp32",
                B, ms, lambda s: run_generator_fixed_length(transformer, s, B, beam, L, transformer_normalize)),
            Row("resmlp/fast/fp32/L", "equal", "ResMLP", "fast path", "fp32", B, ms,
                lambda s: run_api(fp32, s, "fast", B, beam, L)),
            Row("resmlp/fast/int8/L", "equal", "ResMLP", "fast path", "int8", B, ms,
                lambda s: run_api(int8, s, "fast", B, beam, L)),
            Row("resmlp/onnx/int8/L", "equal", "ResMLP", "ONNX step", "int8", B, ms,
                lambda s: run_api(int8, s, "onnx", B, beam, L)),
        ]
        for p, system in ct2.items():
            rows.append(Row(f"transformer/ctranslate2/{p}/L", "equal", "Transformer", "CTranslate2", p, B, ms,
                            lambda s, c=system: c.run(s, B, beam, length=L)))
    if L > 0 and args.latency_sentences > 0:  # the fastest engines of each system, one sentence at a time
        rows += [
            Row("resmlp/fast/int8/L1", "equal_latency", "ResMLP", "fast path", "int8", 1, ls,
                lambda s: run_api(int8, s, "fast", 1, beam, L)),
            Row("resmlp/onnx/int8/L1", "equal_latency", "ResMLP", "ONNX step", "int8", 1, ls,
                lambda s: run_api(int8, s, "onnx", 1, beam, L)),
        ]
        if "int8" in ct2:
            rows.append(Row("transformer/ctranslate2/int8/L1", "equal_latency", "Transformer", "CTranslate2", "int8",
                            1, ls, lambda s: ct2["int8"].run(s, 1, beam, length=L)))
    return rows, int8


#: rows decoded in turn within a round, batch by batch (batch 1: sentence by sentence), so that
#: their ratio compares the two engines seconds apart rather than rows apart (:func:`interleave`):
#: the headline comparisons, ResMLP's ONNX int8 engine against CTranslate2 int8 at every batch
#: size and length, with and without the vocabulary map
INTERLEAVED = (
    ("resmlp/api-onnx/int8/b", "transformer/ctranslate2/int8/b"),
    ("resmlp/api-onnx/int8/1", "transformer/ctranslate2/int8/1"),
    ("resmlp/api-onnx-vmap/int8/b", "transformer/ctranslate2-vmap/int8/b"),
    ("resmlp/api-onnx-vmap/int8/1", "transformer/ctranslate2-vmap/int8/1"),
    ("resmlp/onnx/int8/L", "transformer/ctranslate2/int8/L"),
    ("resmlp/onnx/int8/L1", "transformer/ctranslate2/int8/L1"),
)


def interleaved_pairs(rows: List[Row]) -> List[Tuple[Row, Row]]:
    """The pairs of :data:`INTERLEAVED` whose two rows are both there (CTranslate2 is optional)."""
    by_key = {row.key: row for row in rows}
    return [(by_key[a], by_key[b]) for a, b in INTERLEAVED if a in by_key and b in by_key]


def length_order(data: Path, sources: List[str]) -> List[int]:
    """The sentences' indices by their number of source pieces (SentencePiece of the normalised
    sentence; ties in input order): the order in which the API sorts a list before cutting it into
    batches, and CTranslate2 (``max_batch_size``) too."""
    import sentencepiece

    from resmlp_core.text import normalize

    prepared = PreparedData(data)
    src_lang = prepared.info()["src_lang"]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(prepared.spm_model))
    lengths = [len(sp.encode(normalize(s, src_lang))) for s in sources]
    return sorted(range(len(sources)), key=lengths.__getitem__)


def interleave(pair: Tuple[Row, Row], chunks: List[List[int]]) -> List[Measurement]:
    """Both rows of ``pair`` on their (common) sentences, in turn chunk by chunk (``chunks``: lists
    of sentence indices, one batch each), the first row first in even chunks and second in odd
    ones; each row's measurement is the sum of its chunks' (hypotheses in input order)."""
    first, second = pair
    if first.texts is not second.texts or first.batch != second.batch:
        raise ValueError(f"{first.key} and {second.key}: interleaved rows need the same sentences and batch size")
    sources = first.texts.sources
    parts: List[List[Measurement]] = [[], []]
    for n, chunk in enumerate(chunks):
        texts = [sources[i] for i in chunk]
        for which in ((0, 1) if n % 2 == 0 else (1, 0)):
            parts[which].append(pair[which].run(texts))
    out = []
    for measurements in parts:
        hypotheses: List[Optional[str]] = [None] * len(sources)
        for chunk, m in zip(chunks, measurements):
            for i, hypothesis in zip(chunk, m.hypotheses, strict=True):
                hypotheses[i] = hypothesis
        latencies = [ms for m in measurements for ms in (m.latencies_ms or [])]
        out.append(Measurement(sum(m.seconds for m in measurements), hypotheses,
                               [n for m in measurements for n in m.lengths], latencies_ms=latencies or None))
    return out


def chunks_of(row: Row, order: List[int]) -> List[List[int]]:
    """``row``'s batches for :func:`interleave`: each sentence alone at batch 1, else ``order`` (its
    sentences by length, :func:`length_order`) cut into batches of ``row.batch``."""
    if row.batch == 1:
        return [[i] for i in range(len(row.texts.sources))]
    if len(order) != len(row.texts.sources):
        raise ValueError(f"{row.key}: an order of {len(order)} sentences for {len(row.texts.sources)}")
    return [order[start:start + row.batch] for start in range(0, len(order), row.batch)]


def warm_up(rows: List[Row]) -> None:
    """One untimed call per in-process row on a few sentences (lazy initialisation, allocator)."""
    for row in rows:
        if row.engine != "fairseq-generate":
            row.run(row.texts.sources[:2])


def check_equal_length(row: Row, m: Measurement, length: int) -> None:
    if row.group in EQUAL_GROUPS and any(n != length + 1 for n in m.lengths):
        raise RuntimeError(f"{row.key}: hypotheses of {sorted(set(m.lengths))} tokens, expected {length} + 1 each")


def median_summary(row: Row) -> dict:
    keys = ("seconds", "sentences_per_second", "tokens_per_second", "latency_ms_mean", "latency_ms_median")
    out = {k: statistics.median(r[k] for r in row.rounds) for k in keys if all(k in r for r in row.rounds)}
    m = row.first
    out.update({
        "key": row.key, "group": row.group, "system": row.system, "engine": row.engine, "precision": row.precision,
        "batch_size": row.batch, "sentences": m.sentences, "tokens": m.tokens,
        "mean_output_tokens": m.tokens / m.sentences, "min_output_tokens": min(m.lengths),
        "max_output_tokens": max(m.lengths), **sacrebleu_score(m.hypotheses, row.texts.refs),
        "hypotheses_sha1": digest(m.hypotheses), "hypotheses_stable_across_rounds": row.hypotheses_stable,
        "vocabulary_map": row.vocabulary_map, "rounds": row.rounds,
    })
    out.update(m.extra)
    return out


#: how the page's ratios are taken (:func:`round_ratio`; pages without it took the ratio of the medians)
RATIOS = "the median over rounds of the two rows' ratio within a round"


def round_ratios(row: dict, reference: dict, unit: str = "tokens") -> Optional[List[float]]:
    """``row``'s ``<unit>_per_second`` over ``reference``'s in each round, in round order; None
    when the rows' rounds differ in number (they do not pair)."""
    key = f"{unit}_per_second"
    mine, theirs = row.get("rounds") or [], reference.get("rounds") or []
    if mine and len(mine) == len(theirs):
        return [a[key] / b[key] for a, b in zip(mine, theirs)]
    return None


def round_ratio(row: dict, reference: dict, unit: str = "tokens") -> float:
    """``row``'s ``<unit>_per_second`` over ``reference``'s: the median over rounds of the two rows'
    ratio within a round (:func:`round_ratios`; measured minutes apart at most, seconds apart for
    the :data:`INTERLEAVED` pairs), so that the machine's drift between rounds cancels instead of
    entering through the two rows' medians, taken from different rounds (this machine's speed
    moved by up to a fifth between rounds); the ratio of the medians when the rows' rounds differ
    in number."""
    ratios = round_ratios(row, reference, unit)
    if ratios:
        return statistics.median(ratios)
    return row[f"{unit}_per_second"] / reference[f"{unit}_per_second"]


def add_ratios(results: List[dict]) -> None:
    """Each row's speed over CTranslate2 int8's in its group and at its batch size
    (:func:`round_ratio`); a row with the vocabulary map over CTranslate2 int8 with the same map."""
    for row in results:
        reference = next((r for r in results if r["group"] == row["group"] and r["system"] == "Transformer"
                          and r["engine"].startswith("CTranslate2") and r["precision"] == "int8"
                          and r["batch_size"] == row["batch_size"]
                          and r.get("vocabulary_map", False) == row.get("vocabulary_map", False)), None)
        for unit in ("tokens", "sentences"):
            row[f"{unit}_per_second_vs_ct2_int8"] = round_ratio(row, reference, unit) if reference else None


def equal_length_ratios(results: List[dict]) -> dict:
    rows = {r["key"]: r for r in results}

    pairs = {
        "fairseq-generate ResMLP / Transformer": ("resmlp/fairseq-generate/fp32/L",
                                                  "transformer/fairseq-generate/fp32/L"),
        "SequenceGenerator in process ResMLP / Transformer": ("resmlp/sequence-generator/fp32/L",
                                                               "transformer/sequence-generator/fp32/L"),
        "fast path fp32 / CTranslate2 fp32": ("resmlp/fast/fp32/L", "transformer/ctranslate2/fp32/L"),
        "fast path int8 / CTranslate2 int8": ("resmlp/fast/int8/L", "transformer/ctranslate2/int8/L"),
        "ONNX step int8 / CTranslate2 int8": ("resmlp/onnx/int8/L", "transformer/ctranslate2/int8/L"),
        "batch 1, fast path int8 / CTranslate2 int8": ("resmlp/fast/int8/L1", "transformer/ctranslate2/int8/L1"),
        "batch 1, ONNX step int8 / CTranslate2 int8": ("resmlp/onnx/int8/L1", "transformer/ctranslate2/int8/L1"),
    }
    out = {}
    for name, (a, b) in pairs.items():
        if a in rows and b in rows:
            out[name] = round_ratio(rows[a], rows[b])
    return out


# ----------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    """:func:`benchmarks.common.machine_info` (CPU, cores, GPU, versions) plus the cores this
    process may use and the load when the benchmark started."""
    from benchmarks.common import git_state, machine_info

    return {**machine_info(packages=("fairseq",)), **git_state(), "logical_cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def versions() -> dict:
    import fairseq
    import onnxruntime
    import sacrebleu
    import sentencepiece

    return {"torch": torch.__version__, "fairseq": fairseq.__version__, "ctranslate2": ctranslate2_version(),
            "onnxruntime": onnxruntime.__version__,
            "sacrebleu": sacrebleu.__version__, "sentencepiece": sentencepiece.__version__,
            "quantized_engine": torch.backends.quantized.engine}


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def markdown(results: dict) -> str:
    s, m, v, c = results["settings"], results["machine"], results["versions"], results["checkpoints"]
    lines = [
        "# Decoding benchmark: ResMLP and a Transformer of the same size",
        "",
        f"{m['cpu']}, {m['cores_available']} cores available, {s['threads']} thread(s) per system; torch {v['torch']}, "
        f"fairseq {v['fairseq']}, CTranslate2 {v['ctranslate2'] or 'not installed'}. "
        f"Beam {s['beam']}"
        + (f" (ResMLP at beam {s['resmlp_beam']} outside the equal-length rows)"
           if s.get("resmlp_beam", s["beam"]) != s["beam"] else "")
        + f", split `{s['split']}`, median of {s['rounds']} interleaved round(s)"
        f"{' (--quick)' if s['quick'] else ''}" + (f"; ratios: {s['ratios']}." if s.get("ratios") else ".")
        + (" ResMLP's ONNX int8 engine and CTranslate2 int8 decode in turn within a round, batch by batch "
           "(batch 1: sentence by sentence), at every batch size and length." if s.get("interleaved") else ""),
        "",
        f"* ResMLP: `{c['resmlp']['arch']}`, {c['resmlp']['parameters']:,} parameters, "
        f"{c['resmlp']['updates']} updates (`{c['resmlp']['path']}`)",
        f"* Transformer: `{c['transformer']['arch']}`, {c['transformer']['parameters']:,} parameters, "
        f"{c['transformer']['updates']} updates (`{c['transformer']['path']}`)",
        "",
    ]
    for group in GROUPS:
        rows = [r for r in results["rows"] if r["group"] == group]
        if not rows:
            continue
        title = GROUPS[group].format(batch=s["batch_size"], length=s["equal_length"])
        lines += [f"## {title} ({rows[0]['sentences']} sentences)", ""]
        latency = group in ONE_AT_A_TIME
        head = "| system | engine | precision | batch | sentences/s | tokens/s | mean tokens | sacreBLEU |"
        rule = "|---|---|---|---:|---:|---:|---:|---:|"
        if latency:
            head += " ms/sentence (median) |"
            rule += "---:|"
        head += " × CT2 int8 (tokens/s) | × CT2 int8 (sentences/s) |"
        rule += "---:|---:|"
        lines += [head, rule]
        for r in rows:
            line = (f"| {r['system']} | {r['engine']} | {r['precision']} | {r['batch_size']} | "
                    f"{r['sentences_per_second']:.1f} | {r['tokens_per_second']:.0f} | {r['mean_output_tokens']:.1f} | "
                    f"{r['sacrebleu']:.2f} |")
            if latency:
                line += (f" {r['latency_ms_median']:.1f} |" if "latency_ms_median" in r
                         else f" {r['latency_ms_mean']:.1f} (mean) |")
            line += (f" {_fmt(r['tokens_per_second_vs_ct2_int8'], '.2f')} |"
                     f" {_fmt(r['sentences_per_second_vs_ct2_int8'], '.2f')} |")
            lines.append(line)
        lines.append("")
    if results["equal_length_ratios"]:
        lines += ["Equal output length: " + ", ".join(f"{k}: **{val:.2f}×** tokens/s"
                                                      for k, val in results["equal_length_ratios"].items()) + ".", ""]
    split = results.get("batch1_time_split")
    if split:
        lines += [f"Where a batch-1 sentence's time goes, ResMLP {split['engine']} {split['precision']} (one more pass "
                  f"over the {split['sentences']} sentences, ONNX Runtime's calls timed; "
                  f"{split['steps_per_sentence']:.1f} decoder steps per sentence):", "",
                  "| part | ms/sentence | share |", "|---|---:|---:|"]
        lines += [f"| {SPLIT_PARTS[part]} | {ms:.2f} | {100 * ms / split['total_ms']:.0f}% |"
                  for part, ms in split["ms"].items()]
        lines += [f"| total | {split['total_ms']:.2f} | |", ""]
    same: Dict[tuple, List[str]] = {}
    for r in results["rows"]:
        same.setdefault((r["group"], r["hypotheses_sha1"]), []).append(f"{r['system']} {r['engine']} {r['precision']}")
    identical = "; ".join(f"{GROUPS[group].split(':')[0].split(',')[0].lower()}: {' = '.join(names)}"
                          for (group, _), names in same.items() if len(names) > 1)
    signature = results["rows"][0]["sacrebleu_signature"] if results["rows"] else ""
    lines += [
        "Notes:",
        "",
        "* tokens = SentencePiece pieces of the output plus its end-of-sentence (one per decoder step), counted "
        "alike for every row; sacreBLEU on the sentences of the row, detokenized, signature "
        f"`{signature}`.",
        "* fairseq-generate rows: fairseq's own generation timer (the search only: no process start, model or data "
        "loading; latency rows give the mean), which includes the one-time warm-up of the process's first batch "
        "(e.g. torch's first attention call in the Transformer's encoder). Other rows: wall-clock of the call, text in "
        "to text out, after an untimed warm-up call; \"SequenceGenerator in process\" is fairseq's search as "
        "fairseq-generate runs it, without that warm-up.",
        "* Equal length: fairseq `--min-len L --max-len-a 0 --max-len-b L` and the fast path `min_len = max_len_b = "
        f"L` (L = {s['equal_length']}) give L pieces + end-of-sentence, checked for every hypothesis; CTranslate2 "
        "cannot force an end-of-sentence, so it runs the same L + 1 decoder steps (min = max decoding length = L + 1).",
        "* CTranslate2 int8 quantizes the converted float32 model on load (compute_type=\"int8\").",
    ]
    if s.get("vocabulary_map"):
        lines.append(f"* Vocabulary map rows: both systems score only the candidates of the batch's source pieces in "
                     f"`{s['vocabulary_map']}` (ResMLP: `use_vocabulary_map`, CTranslate2: converted with it, "
                     "`use_vmap`); their ratios are to CTranslate2 int8 with the same map.")
    if identical:
        lines.append(f"* Identical hypotheses (same group): {identical}.")
    lines += [f"* {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "data-bin" / "multi30k.en-de", help="prepared data folder")
    p.add_argument("--resmlp", type=Path, default=REPO / "checkpoints" / "multi30k.en-de.resmlp" / "checkpoint_best.pt",
                   help="ResMLP fairseq checkpoint")
    p.add_argument("--transformer", type=Path,
                   default=REPO / "checkpoints" / "multi30k.en-de.transformer" / "checkpoint_best.pt",
                   help="fairseq `transformer` checkpoint of the same size")
    p.add_argument("--split", default="test")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--resmlp-beam", type=int, metavar="N",
                   help="ResMLP's beam outside the equal-length rows (default: --beam), e.g. 1 for a distilled "
                        "student decoded greedily against its teacher at --beam")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sentences", type=int, default=0, help="translate the first N sentences of the split (0: all)")
    p.add_argument("--latency-sentences", type=int, default=200,
                   help="batch-1 rows translate the first N sentences (0: no batch-1 rows)")
    p.add_argument("--equal-length", type=int, default=20, metavar="L",
                   help="the equal-output-length rows' L (0: none)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per system")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench_decode", help="writes OUT.json and OUT.md")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_decode",
                   help="model folder, CTranslate2 conversion, data subsets")
    p.add_argument("--vocabulary-map", type=Path, metavar="VMAP",
                   help="also decode with this vocabulary map (python -m mt_tools.vocabulary_map): ResMLP's ONNX int8 "
                        "engine and CTranslate2 int8 (converted with it, use_vmap), at the batch size and at batch 1")
    p.add_argument("--quick", action="store_true", help="smoke test: 16 sentences, latency on 4, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.sentences, args.latency_sentences, args.rounds = 16, 4, 1
    for path, what in ((PreparedData(args.data).info_file, "--data"), (args.resmlp, "--resmlp"),
                       (args.transformer, "--transformer"), (args.vocabulary_map, "--vocabulary-map")):
        if path is None:
            continue
        if not path.is_file():
            p.error(f"{what}: {path} not found")
    if args.resmlp_beam is None:
        args.resmlp_beam = args.beam
    if args.rounds < 1 or args.threads < 1 or args.batch_size < 1 or args.beam < 1 or args.resmlp_beam < 1:
        p.error("--rounds, --threads, --batch-size, --beam and --resmlp-beam must be positive")

    torch.set_num_threads(args.threads)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine(), "versions": versions()}
    info["checkpoints"] = {"resmlp": checkpoint_info(args.resmlp), "transformer": checkpoint_info(args.transformer)}
    if not is_transformer(info["checkpoints"]["transformer"]["arch"]):
        p.error(f"--transformer: {args.transformer} is not a fairseq transformer checkpoint")
    notes: List[str] = []
    if info["machine"]["load_average_at_start"] and info["machine"]["load_average_at_start"][0] > 0.5:
        notes.append(f"load average {info['machine']['load_average_at_start'][0]:.2f} at the start: "
                     "other processes were running, timings are not clean.")

    full = text_set(args.data, args.split)
    n_main = args.sentences if 0 < args.sentences < len(full.refs) else len(full.refs)
    main_set = text_set(make_subset(args.data, args.split, n_main, work / f"data-{args.split}-first{n_main}"),
                        args.split)
    n_lat = min(args.latency_sentences, n_main)
    latency_set = text_set(make_subset(args.data, args.split, n_lat, work / f"data-{args.split}-first{n_lat}"),
                           args.split)
    say(f"{n_main} sentences at batch {args.batch_size}, {n_lat} at batch 1, {args.rounds} round(s), "
        f"{args.threads} thread(s)")

    rows, int8_translator = build_rows(args, work, main_set, latency_set, info, notes)
    pairs = interleaved_pairs(rows) if args.threads == 1 else []  # (see the module docstring)
    partner = {row.key: pair for pair in pairs for row in pair}
    order = length_order(args.data, main_set.sources) if pairs else []  # the batches of the pairs
    say(f"{len(rows)} rows; warming up the in-process ones")
    warm_up(rows)
    for rnd in range(1, args.rounds + 1):
        done = set()
        for i, row in enumerate(rows, 1):
            if row.key in done:
                continue
            together = partner.get(row.key, (row,))
            say(f"round {rnd}/{args.rounds}, row {i}/{len(rows)}: "
                + " and ".join(f"{r.system} {r.engine} {r.precision}" for r in together)
                + f" batch {row.batch} ({len(row.texts.sources)} sentences)"
                + (", in turn batch by batch" if len(together) > 1 else ""))
            gc.collect()
            if not args.quick:  # a smoke test times nothing worth the pause
                time.sleep(0.3)  # let the previous row's worker threads go idle
            measured = (interleave(together, chunks_of(row, order)) if len(together) > 1
                        else [row.run(row.texts.sources)])
            for r, m in zip(together, measured):
                done.add(r.key)
                check_equal_length(r, m, args.equal_length)
                summary = m.summary()
                r.rounds.append(summary)
                if r.first is None:
                    r.first = m
                elif m.hypotheses != r.first.hypotheses:
                    r.hypotheses_stable = False
                say(f"    {r.system} {r.engine}: {summary['sentences_per_second']:.1f} sentences/s, "
                    f"{summary['tokens_per_second']:.0f} tokens/s")

    time_split = None
    if n_lat > 0:  # after the rounds, so that the timers never touch a timed row
        say("batch 1, ResMLP ONNX int8: where the time goes (one more pass)")
        time_split = {"engine": "API engine=onnx", "precision": "int8",
                      **onnx_time_split(int8_translator, latency_set.sources, args.resmlp_beam)}
    results_rows = [median_summary(row) for row in rows]
    add_ratios(results_rows)
    info["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results = {
        **info,
        "settings": {"data": str(args.data), "split": args.split, "beam": args.beam, "resmlp_beam": args.resmlp_beam,
                     "batch_size": args.batch_size,
                     "sentences": n_main, "latency_sentences": n_lat, "equal_length": args.equal_length,
                     "rounds": args.rounds, "ratios": RATIOS, "threads": args.threads, "quick": args.quick,
                     "interleaved": [[a.key, b.key] for a, b in pairs],
                     "vocabulary_map": None if args.vocabulary_map is None else str(args.vocabulary_map),
                     "command": shlex.join(["python", "-m", "benchmarks.bench_decode",
                                            *map(str, sys.argv[1:] if argv is None else argv)]),
                     "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "rows": results_rows,
        "equal_length_ratios": equal_length_ratios(results_rows),
        "batch1_time_split": time_split,
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{args.out}.json"), Path(f"{args.out}.md")
    write_result(json_path, json.dumps(results, indent=1) + "\n")
    table = repo_relative(markdown(results))  # as written: the paths relative to the repository
    write_result(md_path, table)
    print(table)
    say(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
