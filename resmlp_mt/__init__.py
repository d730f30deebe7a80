"""ResMLP for machine translation: a fairseq plugin.

Use with fairseq's command-line tools::

    fairseq-train data-bin/multi30k.en-de --user-dir resmlp_mt --arch resmlp_mt_small ...
    fairseq-generate data-bin/multi30k.en-de --user-dir resmlp_mt --path checkpoint_best.pt ...

Archs: ``resmlp_mt`` (ResMLP-6), ``resmlp_mt_12`` (ResMLP-12), ``resmlp_mt_small``. What the
plugin changes in fairseq itself (safe checkpoint loading, atomic copies, restarts, interactive
input) is :mod:`resmlp_mt.fairseq_patches`, installed here before anything is read.
"""

from . import fairseq_patches

fairseq_patches.install()

from .fairseq_patches import FAIRSEQ_CHECKPOINT_GLOBALS  # noqa: E402,F401  (kept importable from here)
from .model import ResMLPDecoder, ResMLPEncoder, ResMLPTranslationModel  # noqa: E402

__all__ = ["ResMLPEncoder", "ResMLPDecoder", "ResMLPTranslationModel"]
