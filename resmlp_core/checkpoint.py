"""Comparing a checkpoint's state dict with a model's, for error messages that name what differs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Mapping, Tuple, Type

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
        for title, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected), ("shape mismatches", shapes)):
            if keys:
                shown = keys[:limit] + ([f"... and {len(keys) - limit} more"] if len(keys) > limit else [])
                out.append(f"{title} ({len(keys)}): " + ", ".join(shown))
        return out


def compare_state_dicts(
    model_state: Mapping[str, torch.Tensor], checkpoint_state: Mapping[str, torch.Tensor], ignore_shapes: Iterable[str] = ()
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
