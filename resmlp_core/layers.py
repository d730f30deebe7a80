"""The two ResMLP operators shared by the translation plugin and the vision models.

This module depends on torch only, so that ``resmlp_mt`` (fairseq, no torchvision) and
``vision`` (timm, no fairseq) both build on the same definition.

Layout convention: token-first tensors ``(L, B, C)`` (sequence length or number of patches,
batch, channels). fairseq's encoder/decoder stacks already use ``T x B x C``; the vision
models keep their residual stream in the same layout. With tokens first, mixing tokens is a
single matrix product ``A[:L, :L] @ x.view(L, B * C)``, with no transposes, which is the
point of choosing this layout.
"""

from __future__ import annotations

import torch
from torch import nn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, self.alpha, x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class CrossTokenLinear(nn.Module):
    """The cross-token linear layer of ResMLP (paper Eq. 2, the matrix ``A``).

    ``out[i, b, c] = sum_j A[i, j] * x[j, b, c] + bias[i]``: one ``max_tokens x max_tokens``
    matrix shared by every channel, no non-linearity. A batch whose longest sequence has
    ``L`` tokens uses ``A[:L, :L]`` and ``bias[:L]`` (paper §2, "Sequence-to-sequence
    ResMLP"); rows and columns past ``L`` are untouched.

    ``weight`` and ``bias`` have the names and shapes of ``nn.Linear(max_tokens,
    max_tokens)``, the layout of timm's ``linear_tokens`` and DeiT's ``attn``.

    Args:
        max_tokens: the largest sequence length (or number of patches) supported.
        causal: keep only the lower triangle of ``A`` (diagonal included), so that token
            ``i`` sees tokens ``j <= i`` only. Used by the translation decoder.

    Shapes: input ``(L, B, C)`` with ``L <= max_tokens``, output ``(L, B, C)``.
    """

    def __init__(self, max_tokens: int, causal: bool = False):
        super().__init__()
        self.max_tokens = max_tokens
        self.causal = causal
        self.weight = nn.Parameter(torch.empty(max_tokens, max_tokens))
        self.bias = nn.Parameter(torch.zeros(max_tokens))
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Truncated normal (std 0.02) weight and zero bias, as the official ResMLP code."""
        nn.init.trunc_normal_(self.weight, std=std)
        nn.init.zeros_(self.bias)
        if self.causal:
            with torch.no_grad():
                self.weight.copy_(self.weight.tril())  # the upper triangle is never used

    def matrix(self, length: int) -> torch.Tensor:
        """The ``(length, length)`` mixing matrix used for a sequence of ``length`` tokens."""
        if length > self.max_tokens:
            raise ValueError(
                f"sequence of {length} tokens is longer than this cross-token layer supports "
                f"({self.max_tokens}); raise the model's maximum positions or shorten the input"
            )
        weight = self.weight[:length, :length]
        return weight.tril() if self.causal else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.size(0)
        out = torch.addmm(self.bias[:length, None], self.matrix(length), x.reshape(length, -1))
        return out.view(x.shape)

    def forward_last(self, history: torch.Tensor) -> torch.Tensor:
        """Output at the last position only, from all inputs so far (incremental decoding).

        ``history`` is ``(t + 1, B, C)``, the inputs at positions ``0..t``; returns
        ``(1, B, C)``, equal to ``forward(history)[t:]`` for a causal layer, in O(t) work.
        """
        t = history.size(0) - 1
        if t >= self.max_tokens:
            self.matrix(t + 1)  # raises the length error
        row = self.weight[t : t + 1, : t + 1]
        out = torch.addmm(self.bias[t : t + 1, None], row, history.reshape(t + 1, -1))
        return out.view(1, *history.shape[1:])

    def extra_repr(self) -> str:
        return f"max_tokens={self.max_tokens}, causal={self.causal}"
