"""Options of the token mixer beyond the paper's (for ablation studies; the paper's layer is
:class:`resmlp_core.layers.CrossTokenLinear`, and :func:`build_token_mixer` returns it when no
option is set, so a default model keeps its parameter names and arithmetic).

The options are those of the attention-free sequence models that matched a Transformer in
translation (LightConv, Synthesizer Random, gMLP, Average Attention Network):

* ``heads`` ``H``: ``H`` mixing matrices, head ``h`` mixing the channels ``h*C/H .. (h+1)*C/H - 1``
  (contiguous groups, as LightConv's weight sharing), instead of one matrix for all channels;
* ``positions``: ``"absolute"`` (the paper: ``A[t, s]`` is a free parameter per pair of positions)
  or ``"relative"`` (``A[t, s] = w[t - s]``, a Toeplitz matrix: a convolution kernel over offsets);
* ``kernel`` ``K``: a band, only offsets ``|t - s| < K`` mix (causal: ``0 <= t - s < K``); 0 means
  no band. A banded causal mixer decodes with a buffer of the last ``K - 1`` inputs;
* ``normalize``: ``"none"`` (the paper) or ``"softmax"``: each row of the matrix is the softmax of
  its weights over the positions it may read (inside the sentence, causal, in the band), so the
  mixing is a weighted average whatever the sentence's length (Synthesizer, LightConv);
* ``weights``: ``"static"`` (the paper: the mixing weights are parameters) or ``"dynamic"``
  (relative positions only): each output position ``t`` adds to the static kernel a kernel over
  the offsets predicted from its own input, ``w_t = w + P x_t`` (DynamicConv, Wu et al. 2019, whose
  predicted kernels reached the Transformer on WMT14 En-De). ``P`` starts at zero, so training
  starts from the static mixer; the mixing then depends on the content of the sentence, with no
  attention (no pairwise scores) and the same incremental buffers as the static mixer;
* ``gate`` (:class:`GatedTokenMixer`): ``"glu"`` (a GLU input projection before mixing, LightConv)
  or ``"sgu"`` (gMLP's spatial gating unit, ``u * mix(LayerNorm(v))``).

Padding convention (the translation plugin's ``left_align``): every sequence starts at position
0, so its valid positions are ``0 .. len-1``; ``padding_mask`` ``(L, B, 1)`` (True at padding)
marks the rest. Padding inputs are zeroed and excluded from the softmax, so a sequence's outputs
do not depend on its batch's padding.

Layout: token-first ``(L, B, C)``, as :mod:`resmlp_core.layers`.
"""

from __future__ import annotations

import uuid
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import CrossTokenLinear, IncrementalState

POSITIONS = ("absolute", "relative")
NORMALIZATIONS = ("none", "softmax")
GATES = ("none", "glu", "sgu")
WEIGHTS = ("static", "dynamic")


class TokenMixer(nn.Module):
    """A cross-token linear layer with the options of the module docstring: ``H`` heads over
    channel groups, absolute or relative (Toeplitz) positions, an optional band of width ``K``,
    optional softmax normalisation of the rows, static or dynamic (input-predicted) weights.

    ``out[t, b, h*R + r] = sum_s M[b, h, t, s] * x[s, b, h*R + r] + bias[t]`` with ``R = C / H`` and
    ``M`` the mixing weights of :meth:`mixing_weights` (``M[h, t, s] = A_h[t, s]`` masked to the
    allowed positions; the softmax of those over each row with ``normalize="softmax"``; with
    dynamic weights ``A_h[b, t, s] = w_h[t - s] + (P x[t, b])_h[t - s]``).

    Parameters:
        ``weight``: ``(H, N, N)`` with absolute positions (``A_h[t, s] = weight[h, t, s]``);
        ``(H, W)`` with relative positions, ``W`` the number of offsets: ``K`` (or ``N``) causal,
        ``w_h[d] = weight[h, d]`` for ``d = t - s >= 0``; ``2K - 1`` (or ``2N - 1``) otherwise,
        ``w_h[d] = weight[h, d + W // 2]``.
        ``bias``: ``(N,)``, per output position and shared by all channels, as the paper's layer
        (the only absolute-position parameter of a relative mixer).
        ``dynamic_proj`` (dynamic weights only): a Linear ``C -> H * W`` without bias (``weight`` is
        its bias), zero at initialisation: the kernel predicted from the input at ``t``.

    Args:
        num_tokens: ``N``, the longest sequence supported (as :class:`CrossTokenLinear`).
        causal: output position ``t`` reads positions ``s <= t`` only (the decoder).
        heads: ``H``, dividing ``dim``.
        dim: the number of channels ``C`` (needed only to check that ``heads`` divides it).
        positions, kernel, normalize, weights: see the module docstring.

    Incremental decoding (causal layers) as :class:`CrossTokenLinear`: ``forward(x,
    incremental_state=state)`` takes one position ``(1, B, C)`` per call; the state keeps the past
    inputs, all of them or, with a band, the last ``K - 1`` (LightConv's ``input_buffer``), and
    the number of positions seen; :meth:`reorder_incremental_state` follows beam search.

    Shapes: input ``(L, B, C)`` with ``L <= num_tokens``, output ``(L, B, C)``.
    """

    def __init__(self, num_tokens: int, dim: int, causal: bool = False, heads: int = 1, positions: str = "absolute",
                 kernel: int = 0, normalize: str = "none", weights: str = "static"):
        super().__init__()
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if weights == "dynamic" and positions != "relative":
            raise ValueError("dynamic weights need relative positions (the predicted kernel is over offsets)")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        if heads < 1 or dim % heads:
            raise ValueError(f"heads={heads} must be positive and divide the {dim} channels")
        if kernel < 0:
            raise ValueError(f"kernel={kernel} must be >= 1, or 0 for no band")
        self.num_tokens, self.dim, self.causal, self.heads = num_tokens, dim, causal, heads
        self.positions, self.kernel, self.normalize = positions, kernel, normalize
        self.dynamic = weights == "dynamic"
        if positions == "absolute":
            shape: Tuple[int, ...] = (heads, num_tokens, num_tokens)
        else:
            width = kernel or num_tokens
            shape = (heads, width if causal else 2 * width - 1)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(num_tokens))
        self.dynamic_proj = nn.Linear(dim, heads * shape[-1], bias=False) if self.dynamic else None
        self._state_key = f"{uuid.uuid4()}.buffer"
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Truncated normal (std 0.02) weights and zero bias, as :class:`CrossTokenLinear`; a zero
        kernel predictor (training starts from the static mixer)."""
        nn.init.trunc_normal_(self.weight, std=std)
        nn.init.zeros_(self.bias)
        if self.dynamic_proj is not None:
            nn.init.zeros_(self.dynamic_proj.weight)

    def _check_length(self, length: int) -> None:
        if length > self.num_tokens:
            raise ValueError(
                f"sequence of {length} tokens is longer than this token mixer supports "
                f"({self.num_tokens}); raise the model's maximum positions or shorten the input"
            )

    def allowed(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``(R, S)`` bool: which input positions ``cols`` ``(S,)`` each output position of ``rows``
        ``(R,)`` reads (causal and band rules; padding is the caller's ``valid``)."""
        offsets = rows[:, None] - cols[None, :]
        allowed = offsets >= 0 if self.causal else torch.ones_like(offsets, dtype=torch.bool)  # the causal rule
        if self.kernel:
            allowed = allowed & (offsets.abs() < self.kernel)
        return allowed

    def _weights(self, rows: Tensor, cols: Tensor, inputs: Optional[Tensor] = None) -> Tensor:
        """``(H, R, S)`` the free weights ``A_h[t, s]`` for ``t`` in ``rows``, ``s`` in ``cols``
        (contiguous ranges of positions), before masking; ``(B, H, R, S)`` with dynamic weights and
        ``inputs`` ``(R, B, C)``, the inputs at the positions ``rows``."""
        if self.positions == "absolute":  # (indexed by the position tensors: an ONNX trace keeps the length free)
            return self.weight.index_select(1, rows).index_select(2, cols)
        offsets = rows[:, None] - cols[None, :]
        if not self.causal:
            offsets = offsets + self.weight.size(1) // 2
        index = offsets.clamp(0, self.weight.size(1) - 1)  # masked positions read any weight
        static = self.weight[:, index]
        if inputs is None or self.dynamic_proj is None:
            return static
        return static + self._predicted(inputs, index)

    def _predicted(self, inputs: Tensor, index: Tensor) -> Tensor:
        """``(B, H, R, S)`` the predicted part of the dynamic weights: ``(P x[t])_h`` at the kernel
        entries ``index`` ``(R, S)``, from ``inputs`` ``(R, B, C)``. Only the entries that ``index``
        reads are predicted (a contiguous range: ``rows`` and ``cols`` are), not all ``W``: a sentence
        of ``L`` tokens reads ``2L - 1`` of a non-causal kernel's ``2T - 1`` entries (``T`` the maximum
        positions: 25 of 255 for 13 tokens and ``T = 128``). The range is computed with tensor
        operations, so that an ONNX trace keeps the length free."""
        R, B = inputs.shape[:2]
        proj = self.dynamic_proj
        if isinstance(proj, nn.Linear):
            first = index.min()
            used = torch.arange(first, index.max() + 1, device=index.device)  # (U,)
            weight = proj.weight.view(self.heads, -1, proj.in_features).index_select(1, used)  # (H, U, C)
            predicted = F.linear(inputs, weight.reshape(-1, proj.in_features))
            index = index - first
        else:  # a quantized predictor (no weight to slice): every entry
            predicted = proj(inputs)
        predicted = predicted.view(R, B, self.heads, -1).permute(1, 2, 0, 3)  # (B, H, R, U)
        return predicted.gather(3, index.expand(B, self.heads, *index.shape))

    def mixing_weights(self, rows: Tensor, cols: Tensor, valid: Optional[Tensor] = None,
                       inputs: Optional[Tensor] = None) -> Tensor:
        """The mixing weights ``M`` of output positions ``rows`` ``(R,)`` over input positions
        ``cols`` ``(S,)`` (contiguous, increasing): ``(H, R, S)``, or ``(B, H, R, S)`` when
        ``valid`` ``(B, S)`` (True at the non-padding inputs of each sequence) or, with dynamic
        weights, ``inputs`` ``(R, B, C)`` (the inputs at the positions ``rows``) is given; a
        dynamic mixer without ``inputs`` gives its static part. Zero where reading is not allowed;
        with ``normalize="softmax"``, every row with an allowed position sums to 1 over them (a row
        without any, e.g. a padding row past the band, is 0)."""
        self._check_length(int(rows[-1]) + 1)
        weights = self._weights(rows, cols, inputs)
        mask = self.allowed(rows, cols)
        if valid is not None:
            mask = mask & valid[:, None, None, :]
        if self.normalize == "none":
            return weights * mask
        # A finite fill (not -inf): rows with no allowed position stay finite, then zeroed.
        logits = weights.masked_fill(~mask, torch.finfo(weights.dtype).min)
        return torch.softmax(logits, dim=-1) * mask

    def _mix(self, weights: Tensor, x: Tensor, first_row: int, rows: int) -> Tensor:
        """``weights`` ``(H, R, S)`` or ``(B, H, R, S)`` applied to ``x`` ``(S, B, C)`` -> ``(R, B, C)``,
        plus the bias of output positions ``first_row ..``."""
        S, B, C = x.shape
        groups = x.reshape(S, B, self.heads, C // self.heads)
        if weights.dim() == 3:
            out = torch.einsum("hts,sbhr->tbhr", weights, groups)
        else:
            out = torch.einsum("bhts,sbhr->tbhr", weights, groups)
        return out.reshape(rows, B, C) + self.bias[first_row : first_row + rows, None, None]

    def forward(self, x: Tensor, incremental_state: Optional[IncrementalState] = None,
                padding_mask: Optional[Tensor] = None) -> Tensor:
        """``x`` ``(L, B, C)``; ``padding_mask`` ``(L, B, 1)`` bool (True at padding) or None."""
        if incremental_state is not None:
            return self._step(x, incremental_state)
        length = x.size(0)
        positions = torch.arange(length, device=x.device)
        valid = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask, 0.0)
            if self.normalize != "none" and padding_mask.any():  # zero inputs suffice without it
                valid = ~padding_mask[..., 0].t()
        inputs = x if self.dynamic else None
        return self._mix(self.mixing_weights(positions, positions, valid, inputs), x, 0, length)

    def forward_last(self, history: Tensor) -> Tensor:
        """Output at the last position only: ``history`` ``(t + 1, B, C)``, the inputs at positions
        ``0 .. t`` -> ``(1, B, C)``, equal to ``forward(history)[t:]`` for a causal mixer (the
        interface of :meth:`CrossTokenLinear.forward_last`, used by the lean beam search)."""
        t = history.size(0) - 1
        positions = torch.arange(t + 1, device=history.device)
        inputs = history[-1:] if self.dynamic else None
        return self._mix(self.mixing_weights(positions[-1:], positions, inputs=inputs), history, t, 1)

    def _step(self, x: Tensor, incremental_state: IncrementalState) -> Tensor:
        if not self.causal:
            raise ValueError("incremental decoding needs a causal token mixer")
        if x.size(0) != 1:
            raise ValueError(f"incremental decoding takes one position at a time, got {x.size(0)}")
        saved = incremental_state.get(self._state_key)
        t = 0 if saved is None else int(saved["positions"])
        window = x if saved is None else torch.cat([saved["inputs"], x], dim=0)  # positions t-len+1 .. t
        cols = torch.arange(t - window.size(0) + 1, t + 1, device=x.device)
        out = self._mix(self.mixing_weights(cols[-1:], cols, inputs=x if self.dynamic else None), window, t, 1)
        keep = window if not self.kernel else window[max(0, window.size(0) - (self.kernel - 1)) :]
        incremental_state[self._state_key] = {"inputs": keep, "positions": torch.tensor(t + 1)}
        return out

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Beam search: keep the buffered inputs of the hypotheses ``new_order`` (batch indices)."""
        saved = incremental_state.get(self._state_key)
        if saved is not None:
            incremental_state[self._state_key] = {"inputs": saved["inputs"].index_select(1, new_order),
                                                  "positions": saved["positions"]}

    def extra_repr(self) -> str:
        return (f"num_tokens={self.num_tokens}, causal={self.causal}, heads={self.heads}, positions={self.positions}, "
                f"kernel={self.kernel}, normalize={self.normalize}, weights={'dynamic' if self.dynamic else 'static'}")


class GatedTokenMixer(nn.Module):
    """A token mixer with a multiplicative gate, ``C`` channels in and out.

    Both gates start with ``[a; b] = x W + c``, ``in_proj`` a Linear ``C -> 2C`` (``a``, ``b``:
    ``C`` channels each), then:

    * ``gate="glu"`` (LightConv's input projection): ``out = mix(a * sigmoid(b))``;
    * ``gate="sgu"`` (gMLP's spatial gating unit, with ``u = a``, ``v = b``): ``out = u *
      mix(LayerNorm(v))``; the mixer's bias starts at 1 and its weights near 0 (gMLP's
      initialisation), so the branch starts close to ``u``.

    No output projection: the residual branch's LayerScale and the next channel MLP follow.
    ``mix`` (``mixer``, any mixer taking ``(x, incremental_state, padding_mask)``) mixes ``C``
    channels; padding rows of its input are zeroed by it (the projection's bias would otherwise
    make them non-zero). Incremental decoding and beam reordering are the inner mixer's.

    Shapes: ``(L, B, C) -> (L, B, C)``.
    """

    def __init__(self, dim: int, mixer: nn.Module, gate: str):
        super().__init__()
        if gate not in GATES[1:]:
            raise ValueError(f"gate must be one of {', '.join(GATES[1:])}, got {gate!r}")
        self.gate = gate
        self.in_proj = nn.Linear(dim, 2 * dim)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        self.v_norm = nn.LayerNorm(dim) if gate == "sgu" else None
        self.mixer = mixer
        if gate == "sgu":
            nn.init.ones_(mixer.bias)

    def forward(self, x: Tensor, incremental_state: Optional[IncrementalState] = None,
                padding_mask: Optional[Tensor] = None) -> Tensor:
        a, b = self.in_proj(x).chunk(2, dim=-1)
        if self.gate == "glu":
            return self.mixer(a * torch.sigmoid(b), incremental_state=incremental_state, padding_mask=padding_mask)
        return a * self.mixer(self.v_norm(b), incremental_state=incremental_state, padding_mask=padding_mask)

    def forward_last(self, history: Tensor) -> Tensor:
        """Output at the last position from the raw inputs ``history`` ``(t + 1, B, C)`` at
        positions ``0 .. t`` -> ``(1, B, C)`` (the gate's projection of every position, then the
        inner mixer's :meth:`~TokenMixer.forward_last`): the interface of the lean beam search."""
        a, b = self.in_proj(history).chunk(2, dim=-1)
        if self.gate == "glu":
            return self.mixer.forward_last(a * torch.sigmoid(b))
        return a[-1:] * self.mixer.forward_last(self.v_norm(b))

    def extra_repr(self) -> str:
        return f"gate={self.gate}"


def build_token_mixer(num_tokens: int, dim: int, causal: bool = False, heads: int = 1, positions: str = "absolute",
                      kernel: int = 0, normalize: str = "none", gate: str = "none",
                      weights: str = "static") -> nn.Module:
    """The token mixer with these options: the paper's :class:`CrossTokenLinear` when every option
    is at its default (its parameter names and arithmetic), else a :class:`TokenMixer`, wrapped
    in a :class:`GatedTokenMixer` when ``gate`` is not ``"none"``.

    Every mixer returned is called as ``mixer(x, incremental_state=None, padding_mask=None)``."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
    if is_paper_setting(heads, positions, kernel, normalize, gate, weights):
        return CrossTokenLinear(num_tokens, causal=causal)
    mixer = TokenMixer(num_tokens, dim, causal=causal, heads=heads, positions=positions, kernel=kernel,
                       normalize=normalize, weights=weights)
    return mixer if gate == "none" else GatedTokenMixer(dim, mixer, gate)


def is_paper_setting(heads: int = 1, positions: str = "absolute", kernel: int = 0, normalize: str = "none",
                     gate: str = "none", weights: str = "static") -> bool:
    """Whether these options are the paper's token mixer (one static absolute matrix, no band, no
    normalisation, no gate)."""
    return (heads, positions, kernel, normalize, gate, weights) == (1, "absolute", 0, "none", "none", "static")
