"""The vocabulary shared by the ResMLP translation plugin (``resmlp_mt``) and vision models (``vision``).

* :mod:`resmlp_core.layers`: :class:`Affine`, the token mixer :class:`CrossTokenLinear` (causal as
  an option, with its incremental step), the causal rule :func:`causal`, LayerScale
  (:func:`layer_scale`, :func:`add_scaled`);
* :mod:`resmlp_core.token_mixers`: options of the token mixer for ablations (heads, relative
  positions, band, softmax rows, gates, dynamic weights),
  :func:`~resmlp_core.token_mixers.build_token_mixer`;
* :mod:`resmlp_core.checkpoint`: the state-dict check of both halves (:func:`check_state_dict_fits`);
* :mod:`resmlp_core.io`: crash-safe writes of files and folders;
* :mod:`resmlp_core.text`: the normalisation of translation inputs (data preparation and the Python API).
"""

from .checkpoint import StateDictDiff, check_state_dict_fits, compare_state_dicts
from .layers import Affine, CrossTokenLinear, add_scaled, causal, fold_affine_into_linear, layer_scale

__all__ = [
    "Affine",
    "CrossTokenLinear",
    "StateDictDiff",
    "add_scaled",
    "causal",
    "check_state_dict_fits",
    "compare_state_dicts",
    "fold_affine_into_linear",
    "layer_scale",
]
