"""Translating from Python with an exported model folder (``scripts/export_model.py``).

::

    from resmlp_mt import ResMLPTranslationModel
    m = ResMLPTranslationModel.from_pretrained("models/multi30k.en-de")
    m.translate(["A dog runs."], beam=4)          # -> ["Ein Hund rennt."]

A model folder holds ``model.pt`` (weights and configuration, no optimizer state, loadable
weights-only), ``dict.<src>.txt`` / ``dict.<tgt>.txt``, ``sentencepiece.bpe.model`` and the model
card ``model_card.json`` / ``README.md``. :class:`Translator` is fairseq's
``GeneratorHubInterface`` (beam search, batching of long lists by ``batch_size``/``max_tokens``,
SentencePiece encoding and decoding) with the input normalised as the training data was and
empty lines translated to empty strings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Union

from fairseq.hub_utils import GeneratorHubInterface

MODEL_FILE = "model.pt"
SPM_FILE = "sentencepiece.bpe.model"  # the name fairseq's hub looks for in a model folder
CARD_FILE = "model_card.json"


class Translator(GeneratorHubInterface):
    """A loaded translation model. :meth:`translate` takes a string or a list of strings and
    returns the same shape of detokenized translations."""

    def __init__(self, cfg, task, models, card: dict | None = None):
        super().__init__(cfg, task, models)
        self.card = card or {}
        self.source_lang = self.card.get("source_lang", getattr(cfg.task, "source_lang", None))

    def normalize(self, sentence: str) -> str:
        """The normalisation the training data went through (Moses punctuation, whitespace)."""
        if self.card.get("normalization") != "moses-punct" or not self.source_lang:
            return " ".join(sentence.split())
        from .corpus import normalize

        return normalize(sentence, self.source_lang)

    def translate(
        self, sentences: Union[str, Sequence[str]], beam: int = 4, batch_size: int | None = None, **kwargs
    ) -> Union[str, List[str]]:
        """Translate with beam search (``beam``, 4 as in the paper); ``batch_size`` sentences
        per batch (default: the model card's, else fairseq's token budget)."""
        if isinstance(sentences, str):
            return self.translate([sentences], beam=beam, batch_size=batch_size, **kwargs)[0]
        if batch_size is not None:
            self.cfg.dataset.batch_size = batch_size
        normalized = [self.normalize(s) for s in sentences]
        todo = [i for i, s in enumerate(normalized) if s]
        out = [""] * len(normalized)
        if todo:
            for i, text in zip(todo, self.sample([normalized[i] for i in todo], beam=beam, **kwargs)):
                out[i] = text
        return out


def from_pretrained(
    model_cls, folder: Union[str, Path], checkpoint_file: str = MODEL_FILE, data_name_or_path: str = ".", **kwargs
) -> Translator:
    """Load a model folder written by ``scripts/export_model.py`` (or any fairseq model folder
    with dictionaries and, optionally, ``sentencepiece.bpe.model``)."""
    from fairseq import hub_utils

    folder = Path(folder)
    if not (folder / checkpoint_file).is_file():
        raise FileNotFoundError(
            f"{folder / checkpoint_file} not found: give a folder written by scripts/export_model.py "
            "(or pass checkpoint_file=... for another file name)"
        )
    card = json.loads((folder / CARD_FILE).read_text()) if (folder / CARD_FILE).exists() else {}
    if (folder / SPM_FILE).exists():
        kwargs.setdefault("bpe", "sentencepiece")  # the hub sets sentencepiece_model itself
    kwargs.setdefault("batch_size", card.get("batch_size", 64))
    loaded = hub_utils.from_pretrained(str(folder), checkpoint_file=checkpoint_file, data_name_or_path=data_name_or_path,
                                       archive_map=model_cls.hub_models(), **kwargs)
    return Translator(loaded["args"], loaded["task"], loaded["models"], card=card)
