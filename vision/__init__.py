"""ResMLP image classifiers: timm-registered models, DeiT-recipe training, distillation, folding.

``import vision`` registers ``resmlp_s12``, ``resmlp_s24``, ``resmlp_s36``, ``resmlp_b24``,
``resmlp_s12_p8`` and ``resmlp_b24_p8`` with timm, so that ``timm.create_model(name, ...)``
builds them. This package needs torch, torchvision and timm, never fairseq.
"""

from .resmlp import (
    MODEL_NAMES,
    AffineToFold,
    FoldedResMLPBlock,
    PreHeadAffine,
    ResMLP,
    ResMLPBlock,
    check_state_dict_matches,
    checkpoint_filter_fn,
    remap_state_dict,
)

__all__ = [
    "MODEL_NAMES",
    "AffineToFold",
    "FoldedResMLPBlock",
    "PreHeadAffine",
    "ResMLP",
    "ResMLPBlock",
    "check_state_dict_matches",
    "checkpoint_filter_fn",
    "remap_state_dict",
]
