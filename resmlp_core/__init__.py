"""Operators shared by the ResMLP translation plugin (``resmlp_mt``) and vision models (``vision``)."""

from .layers import Affine, CrossTokenLinear

__all__ = ["Affine", "CrossTokenLinear"]
