"""ResMLP for machine translation: a fairseq plugin.

Use with fairseq's command-line tools::

    fairseq-train data-bin/multi30k.en-de --user-dir resmlp_mt --arch resmlp_mt_small ...
    fairseq-generate data-bin/multi30k.en-de --user-dir resmlp_mt --path checkpoint_best.pt ...

Archs: ``resmlp_mt`` (ResMLP-6), ``resmlp_mt_12`` (ResMLP-12), ``resmlp_mt_small``.
"""

import argparse

import torch

# torch >= 2.6 unpickles checkpoints with weights_only=True; fairseq stores its legacy
# configuration as an argparse.Namespace. Allow that one class and keep safe loading on.
torch.serialization.add_safe_globals([argparse.Namespace])

from .model import ResMLPDecoder, ResMLPEncoder, ResMLPTranslationModel  # noqa: E402

__all__ = ["ResMLPEncoder", "ResMLPDecoder", "ResMLPTranslationModel"]
