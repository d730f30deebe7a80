"""The ResMLP operators shared by the translation plugin and the vision models.

This module depends on torch only, so that ``resmlp_mt`` (fairseq, no torchvision) and
``vision`` (timm, no fairseq) both build on the same definitions:

* :class:`Affine`, ``Aff(x) = alpha * x + beta`` (paper Eq. 1);
* :class:`CrossTokenLinear`, the token mixer (paper Eq. 2, the matrix ``A``), optionally causal
  (:func:`causal`, the one place the rule is written), with its incremental one-position step
  for decoding (:meth:`CrossTokenLinear.forward_last`, and ``incremental_state`` in ``forward``);
* LayerScale: :func:`layer_scale` (the per-channel vector) and :func:`add_scaled` (the residual
  add it multiplies, fused into one ``addcmul``).

Layout convention: token-first tensors ``(L, B, C)`` (sequence length or number of patches,
batch, channels). fairseq's encoder/decoder stacks already use ``T x B x C``; the vision
models keep their residual stream in the same layout. With tokens first, mixing tokens is a
single matrix product ``A[:L, :L] @ x.view(L, B * C)``, with no transposes, which is the
point of choosing this layout.
"""

from __future__ import annotations

import uuid
from typing import Dict, Optional

import torch
from torch import Tensor, nn

#: fairseq's incremental decoding state: ``{"<module id>.<key>": {name: tensor}}``.
IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


class Affine(nn.Module):
    """Aff(x) = alpha * x + beta, per channel, no statistics (paper Eq. 1).

    ``alpha`` and ``beta`` are shaped ``(1, 1, dim)``, exactly as in timm's ResMLP, so a
    timm state dict loads as is; the official DeiT checkpoints store ``(dim,)`` and are
    reshaped by the vision checkpoint mapping.

    Shapes: input ``(*, *, dim)``, output the same.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.beta, self.alpha, x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def fold_affine_into_linear(weight: Tensor, bias: Optional[Tensor], alpha: Tensor, beta: Tensor):
    """``linear(Aff(x)) = x W'^T + b'`` with ``W' = W diag(alpha)`` and ``b' = b + W beta``: returns
    ``(W', b')`` (``alpha``, ``beta`` ``(C_in,)``; ``bias`` may be None). Used by the folded
    vision blocks and head and by the translation decoder folded for inference."""
    folded_bias = weight @ beta
    return weight * alpha, folded_bias if bias is None else folded_bias + bias


def layer_scale(dim: int, init: float) -> nn.Parameter:
    """A LayerScale vector: per-channel multipliers of a residual branch, all ``init`` at start
    (Touvron et al., CaiT; paper Eqs. 2-3)."""
    return nn.Parameter(torch.full((dim,), float(init)))


def add_scaled(x: Tensor, branch: Tensor, scale: Tensor) -> Tensor:
    """The residual add of a LayerScale'd branch, ``x + scale * branch``, as one ``addcmul``."""
    return torch.addcmul(x, branch, scale)


def causal(matrix: Tensor) -> Tensor:
    """The causal rule: output position ``i`` reads input positions ``j <= i`` only (the lower
    triangle of the mixing matrix, diagonal included)."""
    return matrix.tril()


class CrossTokenLinear(nn.Module):
    """The token mixer of ResMLP: the cross-token linear layer (paper Eq. 2, the matrix ``A``).

    ``out[i, b, c] = sum_j A[i, j] * x[j, b, c] + bias[i]``: one ``num_tokens x num_tokens``
    matrix shared by every channel, no non-linearity. A batch whose longest sequence has
    ``L`` tokens uses ``A[:L, :L]`` and ``bias[:L]`` (paper §2, "Sequence-to-sequence
    ResMLP"); rows and columns past ``L`` are untouched.

    ``weight`` and ``bias`` have the names and shapes of ``nn.Linear(num_tokens,
    num_tokens)``, the layout of timm's ``linear_tokens`` and DeiT's ``attn``.

    Args:
        num_tokens: the size of ``A``: the number of patches (vision, every input has them all) or
            the largest sequence length supported (translation; shorter inputs use ``A[:L, :L]``).
            The same name as ``vision.ResMLPBlock`` / ``ResMLP.num_tokens`` (fairseq's
            ``--max-tokens`` is a batch size, not this).
        causal: apply :func:`causal` to ``A`` (token ``i`` sees tokens ``j <= i`` only). Used by
            the translation decoder, which also decodes incrementally (below).

    Incremental decoding (causal layers): ``forward(x, incremental_state)`` takes one new
    position ``(1, B, C)`` per call and keeps the inputs of all past positions in
    ``incremental_state`` (fairseq's dict; any dict works), so step ``t`` is one ``1 x (t+1)``
    by ``(t+1) x BC`` product, O(t) (:meth:`forward_last`). Beam search reorders the kept
    inputs along the batch dimension (:meth:`reorder_incremental_state`, which fairseq's
    incremental decoders call on every module that has it).

    Shapes: input ``(L, B, C)`` with ``L <= num_tokens``, output ``(L, B, C)``.
    """

    def __init__(self, num_tokens: int, causal: bool = False):
        super().__init__()
        self.num_tokens = num_tokens
        self.causal = causal
        self.weight = nn.Parameter(torch.empty(num_tokens, num_tokens))
        self.bias = nn.Parameter(torch.zeros(num_tokens))
        self._state_key = f"{uuid.uuid4()}.history"
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Truncated normal (std 0.02) weight and zero bias, as the official ResMLP code."""
        nn.init.trunc_normal_(self.weight, std=std)
        nn.init.zeros_(self.bias)
        if self.causal:
            with torch.no_grad():
                self.weight.copy_(causal(self.weight))  # the rest is never used

    def _check_length(self, length: int) -> None:
        if length > self.num_tokens:
            raise ValueError(
                f"sequence of {length} tokens is longer than this cross-token layer supports "
                f"({self.num_tokens}); raise the model's maximum positions or shorten the input"
            )

    def matrix(self, length: int) -> Tensor:
        """The ``(length, length)`` mixing matrix used for a sequence of ``length`` tokens."""
        self._check_length(length)
        weight = self.weight[:length, :length]
        return causal(weight) if self.causal else weight

    def forward(self, x: Tensor, incremental_state: Optional[IncrementalState] = None,
                padding_mask: Optional[Tensor] = None) -> Tensor:
        """``x`` ``(L, B, C)``; ``padding_mask`` ``(L, B, 1)`` bool, True at padding, or None: padding
        inputs are zeroed, so they contribute nothing (the interface of every token mixer,
        :func:`resmlp_core.token_mixers.build_token_mixer`)."""
        if incremental_state is not None:
            return self._step(x, incremental_state)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask, 0.0)
        length = x.size(0)
        out = torch.addmm(self.bias[:length, None], self.matrix(length), x.reshape(length, -1))
        return out.view(x.shape)

    def forward_last(self, history: Tensor) -> Tensor:
        """Output at the last position only, from all inputs so far (incremental decoding).

        ``history`` is ``(t + 1, B, C)``, the inputs at positions ``0..t``; returns
        ``(1, B, C)``, equal to ``forward(history)[t:]`` for a causal layer, in O(t) work:
        row ``t`` of :func:`causal` ``(A)`` is ``A[t, :t + 1]``.
        """
        t = history.size(0) - 1
        self._check_length(t + 1)
        row = self.weight[t : t + 1, : t + 1]
        out = torch.addmm(self.bias[t : t + 1, None], row, history.reshape(t + 1, -1))
        return out.view(1, *history.shape[1:])

    def _step(self, x: Tensor, incremental_state: IncrementalState) -> Tensor:
        if not self.causal:
            raise ValueError("incremental decoding needs a causal cross-token layer")
        if x.size(0) != 1:
            raise ValueError(f"incremental decoding takes one position at a time, got {x.size(0)}")
        saved = incremental_state.get(self._state_key)
        history = x if saved is None else torch.cat([saved["inputs"], x], dim=0)
        incremental_state[self._state_key] = {"inputs": history}
        return self.forward_last(history)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Beam search: keep the inputs of the hypotheses ``new_order`` (batch indices)."""
        saved = incremental_state.get(self._state_key)
        if saved is not None:
            incremental_state[self._state_key] = {"inputs": saved["inputs"].index_select(1, new_order)}

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, causal={self.causal}"
