"""Translating from Python with an exported model folder (``scripts/export_model.py``).

::

    from resmlp_mt import ResMLPTranslationModel
    m = ResMLPTranslationModel.from_pretrained("models/multi30k.en-de")
    m.translate(["A dog runs."], beam=4)          # -> ["Ein Hund rennt."]

A model folder holds ``model.pt`` (weights and configuration, no optimizer state, loadable
weights-only), ``dict.<src>.txt`` / ``dict.<tgt>.txt``, ``sentencepiece.bpe.model`` and the model
card ``model_card.json`` / ``README.md``. :class:`Translator` is fairseq's
``GeneratorHubInterface`` (SentencePiece encoding and decoding, fairseq's generator on request)
with the input normalised as the training data was, empty lines translated to empty strings,
long lists cut into batches of similar lengths, and the lean beam search of
:mod:`resmlp_mt.fast_generate` by default (optionally on an int8 model, :meth:`Translator.quantize`).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path
from typing import List, Sequence, Union

import torch
from fairseq.hub_utils import GeneratorHubInterface

from resmlp_core.io import recover_folder

MODEL_FILE = "model.pt"
SPM_FILE = "sentencepiece.bpe.model"  # the name fairseq's hub looks for in a model folder
CARD_FILE = "model_card.json"
ENGINES = ("fast", "onnx", "exact", "fairseq")

logger = logging.getLogger(__name__)

# Builds engines (folding, int8 quantization, ONNX export) one at a time in the whole process:
# torch.onnx.export keeps process-wide state, so two exports at once fail even for two models.
_BUILD_LOCK = threading.Lock()


class Translator(GeneratorHubInterface):
    """A loaded translation model. :meth:`translate` takes a string or a list of strings and
    returns the same shape of detokenized translations."""

    def __init__(self, cfg, task, models, card: dict | None = None):
        super().__init__(cfg, task, models)
        self.card = card or {}
        self.source_lang = self.card.get("source_lang", getattr(cfg.task, "source_lang", None))
        self.quantized = False
        self.vocabulary_map = None  # a VocabularyMap after use_vocabulary_map (engine="onnx")
        self.batch_size = cfg.dataset.batch_size or 64
        self._decoders = {}  # (engine, int8, vocabulary map) -> the model it decodes with, built on first use
        self._fairseq_lock = threading.Lock()  # the fairseq engine sets its batch size in self.cfg per call

    def string(self, tokens: torch.LongTensor) -> str:
        """The target pieces of ``tokens`` ``(T,)`` joined by spaces, end- and beginning-of-sentence
        left out: what fairseq's ``Dictionary.string`` returns for them here (no BPE symbol to
        strip, an unknown token as ``<unk>``), without its Python calls per token (at batch 128 they
        took about 7% of the fast engines' time)."""
        if tokens.dim() != 1:
            return super().string(tokens)
        d = self.tgt_dict
        skip, symbols = (d.eos(), d.bos()), d.symbols
        return " ".join(symbols[i] for i in tokens.tolist() if i not in skip)

    def normalize(self, sentence: str) -> str:
        """The normalisation the training data went through (Moses punctuation, whitespace)."""
        if self.card.get("normalization") != "moses-punct" or not self.source_lang:
            return " ".join(sentence.split())
        from resmlp_core.text import normalize

        return normalize(sentence, self.source_lang)

    def translate(
        self,
        sentences: Union[str, Sequence[str]],
        beam: int = 4,
        batch_size: int | None = None,
        engine: str = "fast",
        lenpen: float = 1.0,
        max_len_a: float = 0.0,
        max_len_b: int = 200,
        min_len: int = 1,
        **kwargs,
    ) -> Union[str, List[str]]:
        """Translate with beam search (``beam``, 4 as in the paper), ``batch_size`` sentences
        per batch (default: the model card's, else 64), hypotheses of at least ``min_len`` and
        at most ``max_len_a * source length + max_len_b`` pieces (fairseq's options).

        Engines:

        * ``"fast"`` (default): :func:`resmlp_mt.fast_generate.generate`, the lean beam search,
          on the folded decoder (:func:`~resmlp_mt.fast_generate.fold_for_inference`), int8 after
          :meth:`quantize`; the fastest for large batches;
        * ``"onnx"``: the same search with the decoder step in ONNX Runtime
          (:class:`resmlp_mt.onnx_decoder.OnnxModel`), int8 after :meth:`quantize`; the fastest
          for single sentences (latency);
        * ``"exact"``: the lean beam search on the unfolded model: fairseq's hypotheses token for
          token;
        * ``"fairseq"``: fairseq's generic ``SequenceGenerator`` (accepts its other options as
          ``kwargs``).

        Every engine decodes every token mixer (``--token-mixer-*``, ``--hybrid-encoder-attention-heads``):
        ``"exact"`` through each mixer's ``forward_last``, ``"fast"`` and ``"onnx"`` through its folded
        step (:class:`~resmlp_mt.fast_generate.FoldedTokenMixer`).

        Folding changes float rounding only: ``"fast"`` and ``"onnx"`` (float32) return the
        hypotheses of ``"exact"`` except where two candidates tie within rounding. The per-call
        ``batch_size`` does not change the model's default.
        """
        if isinstance(sentences, str):
            return self.translate([sentences], beam=beam, batch_size=batch_size, engine=engine, lenpen=lenpen,
                                  max_len_a=max_len_a, max_len_b=max_len_b, min_len=min_len, **kwargs)[0]
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
        if self.quantized and engine == "fairseq":
            raise ValueError("an int8-quantized model decodes with engine='fast', 'onnx' or 'exact', not 'fairseq'")
        if self.vocabulary_map is not None and engine != "onnx":
            raise ValueError(f"a vocabulary map ({self.vocabulary_map.source}) restricts engine='onnx' only, "
                             f"got engine={engine!r}")
        batch_size = batch_size or self.batch_size
        lengths = dict(lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b, min_len=min_len)
        normalized = [self.normalize(s) for s in sentences]
        todo = [i for i, s in enumerate(normalized) if s]
        out = [""] * len(normalized)
        if not todo:
            return out
        if engine == "fairseq":
            with self._fairseq_lock:  # callers in other threads wait: the batch size lives in self.cfg
                saved = (self.cfg.dataset.batch_size, self.cfg.dataset.max_tokens)
                self.cfg.dataset.batch_size, self.cfg.dataset.max_tokens = batch_size, None  # batch_size sentences
                try:
                    texts = self.sample([normalized[i] for i in todo], beam=beam, **lengths, **kwargs)
                finally:
                    self.cfg.dataset.batch_size, self.cfg.dataset.max_tokens = saved
        else:
            if kwargs:
                raise TypeError(f"engine={engine!r} does not take {', '.join(kwargs)}")
            texts = self._translate_fast([normalized[i] for i in todo], beam, batch_size, self._decoder(engine),
                                         **lengths)
        for i, text in zip(todo, texts):
            out[i] = text
        return out

    def _decoder(self, engine: str):
        """The model :func:`~resmlp_mt.fast_generate.generate` runs for ``engine``, built on first
        use under a process-wide lock (threads that ask at once get the one built) and cached."""
        key = (engine, self.quantized, self.vocabulary_map)  # the map by identity: each use_vocabulary_map reads anew
        decoder = self._decoders.get(key)
        if decoder is not None:
            return decoder
        with _BUILD_LOCK:
            if key not in self._decoders:
                self._decoders[key] = self._build_decoder(engine)
            return self._decoders[key]

    def _build_decoder(self, engine: str):
        from .fast_generate import fold_for_inference, quantize_int8

        model = self.models[0]
        if engine == "exact":
            return quantize_int8(model) if self.quantized else model
        if engine == "fast":
            decoder = fold_for_inference(model)
            return quantize_int8(decoder) if self.quantized else decoder
        from .onnx_decoder import OnnxModel

        return OnnxModel(model, int8=self.quantized, vocabulary_map=self.vocabulary_map)

    def _translate_fast(self, sentences: List[str], beam: int, batch_size: int, model, **options) -> List[str]:
        from .fast_generate import generate

        encoded = [self.encode(s) for s in sentences]
        limit = self.max_positions[0] if isinstance(self.max_positions, tuple) else self.max_positions
        for i, tokens in enumerate(encoded):
            if limit is not None and tokens.numel() > limit:
                raise ValueError(
                    f"sentence {i} is {tokens.numel()} tokens long, more than the model's "
                    f"--max-source-positions {limit}"
                )
        order = sorted(range(len(encoded)), key=lambda i: encoded[i].numel())  # similar lengths together
        pad = self.src_dict.pad()
        results: List[str] = [""] * len(encoded)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            length = max(encoded[i].numel() for i in chunk)
            src = torch.full((len(chunk), length), pad, dtype=torch.long)
            for row, i in enumerate(chunk):
                src[row, : encoded[i].numel()] = encoded[i]
            for i, hyps in zip(chunk, generate(model, src, beam=beam, **options)):
                results[i] = self.decode(hyps[0]["tokens"])
        return results

    def quantize(self) -> "Translator":
        """Decode with int8 weights from now on: dynamically quantized linear layers
        (:func:`resmlp_mt.fast_generate.quantize_int8`) for ``engine="fast"`` and ``"exact"``
        (``"exact"`` then follows the int8 model, no longer fairseq's float hypotheses), ONNX
        Runtime's int8 graph for ``engine="onnx"``; ``engine="fairseq"`` is then refused. The float
        model is kept (the quantized copies are built from it on first use)."""
        self.quantized = True
        return self

    def use_vocabulary_map(self, path: str | Path | None) -> "Translator":
        """Decode ``engine="onnx"`` with a lexical shortlist from now on: the vocabulary map at
        ``path`` (CTranslate2's vmap format, :mod:`resmlp_mt.vocabulary_map`; learn one with
        ``python -m mt_tools.vocabulary_map``); the other engines are then refused. Each batch scores
        only its candidates, which is faster and changes the translations (the log-probabilities are
        normalised over the candidates). ``None`` goes back to the whole vocabulary."""
        from .vocabulary_map import VocabularyMap

        self.vocabulary_map = None if path is None else VocabularyMap.read(path, self.src_dict, self.tgt_dict)
        return self


def read_card(path: Path) -> dict:
    """The model card at ``path`` (informational): ``{}`` with a warning naming the file when it is
    missing, unreadable or not a JSON object, never an error."""
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("%s: model card not read (%s); loading the model without it", path, err)
        return {}
    if not isinstance(card, dict):
        logger.warning("%s: model card not read (a JSON %s, not an object); loading the model without it",
                       path, type(card).__name__)
        return {}
    return card


def required_files(folder: Path, checkpoint_file: str, bpe, card: dict) -> List[Path]:
    """The files loading ``folder`` reads: the checkpoint, the dictionary of each language its
    configuration names (the model card's languages when the checkpoint is missing), and the
    SentencePiece model unless ``bpe`` names another one (or None)."""
    checkpoint = folder / checkpoint_file
    langs = [card.get("source_lang"), card.get("target_lang")]
    if checkpoint.is_file():
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
            task = (state.get("cfg") or {}).get("task") or vars(state.get("args") or argparse.Namespace())
            langs = [task.get("source_lang"), task.get("target_lang")]
        except Exception:  # an unreadable checkpoint: fairseq's loader names the problem
            pass
    files = [checkpoint, *(folder / f"dict.{lang}.txt" for lang in dict.fromkeys(langs) if lang)]
    if bpe == "sentencepiece":
        files.append(folder / SPM_FILE)
    return files


def from_pretrained(
    model_cls, folder: Union[str, Path], checkpoint_file: str = MODEL_FILE, data_name_or_path: str = ".", **kwargs
) -> Translator:
    """Load a model folder written by ``scripts/export_model.py``: ``model.pt``, the dictionaries
    and ``sentencepiece.bpe.model`` must be there (``FileNotFoundError`` naming every missing
    file). ``bpe=None`` loads a folder without a SentencePiece model, whose inputs are then
    taken as pieces already."""
    from fairseq import hub_utils

    folder = Path(folder)
    recover_folder(folder)  # an export killed mid-replacement, where the folder swap is not atomic
    kwargs.setdefault("bpe", "sentencepiece")  # the hub sets sentencepiece_model itself
    card = read_card(folder / CARD_FILE)
    missing = [path for path in required_files(folder, checkpoint_file, kwargs["bpe"], card) if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a complete model folder: missing {', '.join(p.name for p in missing)} "
            f"({', '.join(str(p) for p in missing)} not found); give a folder written by "
            "scripts/export_model.py (or pass checkpoint_file=... for another checkpoint name, bpe=None for a "
            "model without SentencePiece)"
        )
    if kwargs["bpe"] is None:
        kwargs.pop("bpe")
    kwargs.setdefault("batch_size", card.get("batch_size", 64))
    loaded = hub_utils.from_pretrained(str(folder), checkpoint_file=checkpoint_file,
                                       data_name_or_path=data_name_or_path, archive_map=model_cls.hub_models(),
                                       **kwargs)
    return Translator(loaded["args"], loaded["task"], loaded["models"], card=card)
