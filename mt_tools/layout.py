"""The prepared-data folder: written by ``scripts/prepare_*.py`` (:func:`mt_tools.corpus.prepare_parallel_corpus`),
read by evaluation, export, benchmarks. Every file name of the layout is defined here and nowhere else.

``data-bin/<corpus>.<src>-<tgt>/`` holds:

=====================================  ==========================================================
``dict.<lang>.txt``                    fairseq's dictionaries (one joined vocabulary)
``<split>.<src>-<tgt>.<lang>.bin/.idx``  the binarized splits (``train``, ``valid``, ``test``)
``spm.model``                          the joint SentencePiece BPE model
``ref/<split>.<lang>``                 the original lines of the valid and test splits (kept pairs, in order)
``prep.json``                          counts and settings (``src_lang``, ``tgt_lang``, ``splits``, ...)
``vmap.txt``                           optional: a vocabulary map (``python -m mt_tools.vocabulary_map``)
=====================================  ==========================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

DATA_BIN = Path("data-bin")  #: the default root of prepared folders, relative to the working directory
INFO_FILE = "prep.json"
SPM_FILE = "spm.model"
REF_DIR = "ref"
VOCABULARY_MAP_FILE = "vmap.txt"


def folder_name(corpus: str, src: str, tgt: str) -> str:
    """``multi30k.en-de``: the name of a prepared folder under a data-bin root."""
    return f"{corpus}.{src}-{tgt}"


class PreparedData:
    """Paths inside one prepared folder ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"PreparedData({str(self.root)!r})"

    @property
    def info_file(self) -> Path:
        return self.root / INFO_FILE

    @property
    def spm_model(self) -> Path:
        return self.root / SPM_FILE

    @property
    def vocabulary_map(self) -> Path:
        """The default place of the folder's vocabulary map (:mod:`mt_tools.vocabulary_map`)."""
        return self.root / VOCABULARY_MAP_FILE

    @property
    def ref_dir(self) -> Path:
        return self.root / REF_DIR

    def is_prepared(self) -> bool:
        """Whether the folder is complete (``prep.json`` is written last)."""
        return self.info_file.is_file()

    def info(self) -> Dict[str, Any]:
        return json.loads(self.info_file.read_text())

    def ref(self, split: str, lang: str) -> Path:
        """The original lines of ``split`` (``valid``/``test``) in ``lang``."""
        return self.ref_dir / f"{split}.{lang}"

    def dictionary(self, lang: str) -> Path:
        return self.root / f"dict.{lang}.txt"

    def binary_prefix(self, split: str, src: str, tgt: str, lang: str) -> Path:
        """``<split>.<src>-<tgt>.<lang>``: add ``.bin`` / ``.idx``."""
        return self.root / f"{split}.{src}-{tgt}.{lang}"
