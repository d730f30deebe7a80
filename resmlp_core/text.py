"""Text normalisation of translation inputs, in one place for the data preparation
(:mod:`mt_tools.corpus`) and the Python API (:mod:`resmlp_mt.hub`): a model translates text
normalised as its training data was. No torch, no fairseq; sacremoses is imported on first use.
"""

from __future__ import annotations

from typing import Dict

_NORMALIZERS: Dict[str, object] = {}


def normalize(line: str, lang: str) -> str:
    """Moses punctuation normalisation, control characters removed, whitespace collapsed."""
    moses = _NORMALIZERS.get(lang)
    if moses is None:
        from sacremoses import MosesPunctNormalizer

        moses = _NORMALIZERS[lang] = MosesPunctNormalizer(lang, post_remove_control_chars=True)
    return " ".join(moses.normalize(line).split())
