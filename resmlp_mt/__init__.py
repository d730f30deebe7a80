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
# The class is registered twice on purpose: scoped allow-lists such as timm's checkpoint
# loader (`with torch.serialization.safe_globals([argparse.Namespace])`) remove the plain
# entry when they exit, which would silently revoke ours in a process that also loads a timm
# checkpoint. The (class, "module.name") entry is a distinct element of torch's allow-list
# that such a context does not remove.
FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace, (argparse.Namespace, "argparse.Namespace")]
torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)

# Checkpoints never run code, and a kill never leaves an unusable run (checkpoint_safety.py).
from . import checkpoint_safety  # noqa: E402

checkpoint_safety.install()

from .model import ResMLPDecoder, ResMLPEncoder, ResMLPTranslationModel  # noqa: E402

__all__ = ["ResMLPEncoder", "ResMLPDecoder", "ResMLPTranslationModel"]

from .interactive_input import install as _install_interactive  # noqa: E402  (per-line input errors)
_install_interactive()
