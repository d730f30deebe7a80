"""Comparing a checkpoint's state dict with a model's, for error messages that name what differs;
what a weights-only ``torch.load`` refused in a file, for error messages that name it
(:func:`load_weights_only`); a state dict's parameter count with tied tensors counted once
(:func:`count_parameters`), and its equal copies of a tied tensor made one again
(:func:`share_equal_matrices`)."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Type

import torch


@dataclass
class StateDictDiff:
    """Keys only the model has, keys only the checkpoint has, and keys whose shapes differ
    as ``(key, checkpoint_shape, model_shape)``; all sorted."""

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def lines(self, checkpoint: str = "checkpoint", model: str = "model", limit: int = 20) -> List[str]:
        """One line per kind of difference, with its count and at most ``limit`` keys, e.g.
        ``shape mismatches (1): blocks.0.ls1: (96,) in the checkpoint, (64,) in the model``."""
        out = []
        shapes = [f"{k}: {c} in the {checkpoint}, {m} in the {model}" for k, c, m in self.mismatched]
        for title, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                            ("shape mismatches", shapes)):
            if keys:
                shown = keys[:limit] + ([f"... and {len(keys) - limit} more"] if len(keys) > limit else [])
                out.append(f"{title} ({len(keys)}): " + ", ".join(shown))
        return out


def share_equal_matrices(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` (a model's state dict) with every floating-point matrix that equals an earlier
    one (same shape, dtype and values) replaced by that one, so that a file saved from it stores
    them once.

    A tied tensor (shared embeddings, the output projection tied to them) is one storage under
    several keys in a trained checkpoint, but equal copies in a checkpoint averaged key by key
    (fairseq's ``scripts/average_checkpoints.py``, and this project's own averaging before it kept
    the ties). Loading copies values into the model's parameters, so sharing equal matrices never
    changes what loads. Vectors are left alone: two untrained biases are equal without being tied."""
    out: Dict[str, torch.Tensor] = {}
    kept: List[torch.Tensor] = []
    for key, value in state.items():
        if value.is_floating_point() and value.dim() > 1:
            same = next((other for other in kept if other.shape == value.shape and other.dtype == value.dtype
                         and torch.equal(other, value)), None)
            if same is not None:
                out[key] = same
                continue
            kept.append(value)
        out[key] = value
    return out


def count_parameters(state: Mapping[str, torch.Tensor]) -> int:
    """The number of parameters in ``state`` (a model's state dict), each tied tensor once: one
    storage under several keys, or equal matrices (:func:`share_equal_matrices`). Buffers that are
    not floating point, and fairseq's ``_float_tensor`` placeholders, are not parameters."""
    seen, params = set(), 0
    for key, value in share_equal_matrices(state).items():
        if not value.is_floating_point() or key.endswith("_float_tensor") or value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        params += value.numel()
    return params


def compare_state_dicts(
    model_state: Mapping[str, torch.Tensor], checkpoint_state: Mapping[str, torch.Tensor],
    ignore_shapes: Iterable[str] = ()
) -> StateDictDiff:
    """What differs between ``model_state`` and ``checkpoint_state`` (shapes of the keys in
    ``ignore_shapes`` are not compared)."""
    ignore = set(ignore_shapes)
    return StateDictDiff(
        missing=sorted(set(model_state) - set(checkpoint_state)),
        unexpected=sorted(set(checkpoint_state) - set(model_state)),
        mismatched=sorted(
            (k, tuple(checkpoint_state[k].shape), tuple(model_state[k].shape))
            for k in set(model_state) & set(checkpoint_state)
            if k not in ignore and tuple(checkpoint_state[k].shape) != tuple(model_state[k].shape)
        ),
    )


def check_state_dict_fits(
    model_state: Mapping[str, torch.Tensor],
    checkpoint_state: Mapping[str, torch.Tensor],
    header: str,
    checkpoint: str = "checkpoint",
    ignore_shapes: Iterable[str] = (),
    hints: Callable[[StateDictDiff], List[str]] = lambda diff: [],
    error: Type[Exception] = ValueError,
) -> None:
    """The one state-dict check of both halves: raise ``error`` when ``checkpoint_state`` does not
    fit ``model_state``, with ``header``, one line per kind of difference (:meth:`StateDictDiff.lines`,
    the checkpoint called ``checkpoint``) and the lines ``hints(diff)`` adds, each on its own
    indented line."""
    diff = compare_state_dicts(model_state, checkpoint_state, ignore_shapes)
    if diff:
        raise error("\n  ".join([header, *diff.lines(checkpoint=checkpoint), *hints(diff)]))


_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
_REFUSAL_DETAIL = re.compile(r"WeightsUnpickler error: ([^\n]*)")


def weights_only_refusal(error: BaseException, path) -> Optional[str]:
    """What to say when ``torch.load(path, weights_only=True)`` raised ``error`` because the file
    holds pickled objects (a class instance, a function, ...), or None for any other error.

    torch's message advises retrying with ``weights_only=False`` or allow-listing the global,
    which would run whatever the file was crafted to run; this one names the file and the global
    it wanted instead: ``x.pt: the file holds pickled objects that safe (weights-only) loading refuses (it
    wanted the global __main__.Payload); ...``."""
    text = str(error)
    if not isinstance(error, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    found = _REFUSED_GLOBAL.search(text)
    if found:
        wanted = f"it wanted the global {found.group(1)}"
    else:
        detail = _REFUSAL_DETAIL.search(text)
        wanted = detail.group(1).split(" Please ")[0].strip().rstrip(".") if detail else "an object torch refuses"
    return (
        f"{path}: the file holds pickled objects that safe (weights-only) loading refuses ({wanted}); "
        "a checkpoint holds only tensors, numbers, strings and containers of them, and no file is loaded "
        "here in a way that could run code it carries"
    )


def load_weights_only(path, error: Type[Exception] = ValueError, **kwargs):
    """``torch.load(path, map_location="cpu", weights_only=True, **kwargs)``; a file holding
    pickled objects raises ``error`` with :func:`weights_only_refusal`'s message (not torch's,
    which advises loading it unsafely). Other errors are torch's."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        refusal = weights_only_refusal(e, path)
        if refusal is None:
            raise
        raise error(f"cannot load {refusal}") from None
