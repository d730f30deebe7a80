"""Operators shared by the ResMLP translation plugin (``resmlp_mt``) and vision models (``vision``)."""

from .checkpoint import StateDictDiff, compare_state_dicts
from .layers import Affine, CrossTokenLinear

__all__ = ["Affine", "CrossTokenLinear", "StateDictDiff", "compare_state_dicts"]
