"""Padding layouts of the ResMLP translation plugin: moving every sentence of a batch to the
front and back.

The cross-token matrix ``A`` is indexed by absolute positions, so every sentence must start at
position 0 whatever its batch and padding side (fairseq left-pads sources by default). The
encoder, the decoder (:class:`resmlp_mt.model.AlignedEmbedding`) and the ONNX engine
(:class:`resmlp_mt.onnx_decoder.OnnxModel`) align their inputs with :func:`left_align` and put
results back with :func:`restore_order` / :func:`inverse_order`.

Depends on torch only (no fairseq), so that every engine can import it without the model.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def left_align(padding_mask: Tensor) -> Optional[Tensor]:
    """Gather indices that move each row's non-padding entries to its front, in order.

    ``padding_mask``: ``(B, T)`` bool. Returns ``(B, T)`` long ``order`` such that
    ``tokens.gather(1, order)`` is right-padded, whatever padding side (or mix) came in; None
    when the batch is right-padded already (no padding before a token).
    """
    if not (padding_mask[:, :-1] & ~padding_mask[:, 1:]).any():
        return None
    return torch.sort(padding_mask.to(torch.uint8), dim=1, stable=True).indices


def restore_order(x: Tensor, order: Tensor) -> Tensor:
    """Inverse of :func:`left_align` for time-first states: ``x`` ``(T, B, C)`` in aligned
    order goes back to the caller's layout, ``out[order[b, i], b] = x[i, b]``."""
    index = order.t().unsqueeze(-1).expand_as(x)
    return torch.empty_like(x).scatter_(0, index, x)


def inverse_order(order: Tensor) -> Tensor:
    """Inverse permutation of each row of ``order`` ``(B, T)`` (e.g. to gather batch-first
    results aligned by :func:`left_align` back into the caller's layout)."""
    return torch.argsort(order, dim=1)
