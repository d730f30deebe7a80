"""Lean beam search for ResMLP translation models on the CPU.

The same search as fairseq's ``SequenceGenerator`` with ``BeamSearch`` (candidates: the top
``2 * beam`` of ``scores + log p``; end-of-sentence candidates among the first ``beam`` are
finished with score ``sum log p / length ** lenpen``; a sentence is done when it has ``beam``
finished hypotheses; the maximum length is ``min(max_len_a * S + max_len_b, max target
positions - 1)``; its rules in one place, :class:`SearchRules`), written for this model's
incremental step instead of the generic one:

* **Cross-attention keys and values once per sentence, never reordered.** They are computed
  once for the batch and shaped ``(B, H, S, d)``; the ``beam`` hypotheses of a sentence read
  them by broadcasting (``(B, H, beam, d) @ (B, H, d, S)``). fairseq stores them per hypothesis
  and re-indexes them at every step.
* **Token-mixing history in preallocated buffers** ``(1 + T, B * beam, C)`` per layer
  (:class:`History`) instead of a ``torch.cat`` per step; beam reordering copies the rows
  written so far into a spare buffer in one ``index_select`` and swaps the two; when sentences
  finish only the written rows move.
* **Finished sentences leave the batch** (as in fairseq), by one ``index_select`` per buffer.
* **No per-step Python bookkeeping per hypothesis** beyond the finished ones.
* **The search's own state in numpy** (prefixes, scores, which hypotheses continue: a few
  numbers per sentence), where an operation costs about a microsecond and a torch one several;
  at batch 1 with the ONNX step this cut the time outside ONNX Runtime by about 30%. The engines
  take it as numpy (:class:`DecoderSteps`); the ONNX engine converts each position's fixed
  token-mixing inputs once. The history is torch tensors with numpy views (:class:`History`):
  reordering a few hypotheses is numpy's, many torch's.

The model it searches with is any of three engines; each model returns the incremental decoder
of a batch from ``model.decoder_steps(src_tokens, beam, max_len)`` (a :class:`DecoderSteps`),
and the search knows nothing else of them:

* a fairseq ResMLP model as trained (:class:`ExactSteps`, each layer's
  :meth:`~resmlp_mt.modules.ResMLPDecoderLayer.step`: fairseq's arithmetic; the tests check
  that it returns fairseq's hypotheses token for token);
* the same model folded for inference (:func:`fold_for_inference`, :class:`FoldedSteps`: every
  Affine pre-normalisation and LayerScale multiplied into the neighbouring weights, equal up to
  float rounding);
* the folded decoder step in ONNX Runtime (:class:`resmlp_mt.onnx_decoder.OnnxModel`, which
  returns a shortlist of the vocabulary per hypothesis instead of the full log-probabilities).

The folded step is written once, :meth:`FoldedDecoder.step` (per layer
:meth:`FoldedDecoderLayer.step`, the token mixer's :meth:`FoldedCrossTokenLinear.step` or, for
the study's options, :meth:`FoldedTokenMixer.step`), and
the ONNX engine exports a trace of that same method. Each engine works in float32 and with int8
weights (:func:`quantize_int8`: dynamic int8 with fbgemm for the PyTorch ones, since every
linear layer is called as a module; ONNX Runtime's own quantization for the ONNX one).

Shapes: ``B`` sentences (``n`` still searched), ``S`` source length, ``k`` beam, ``N = n * k``
hypotheses, ``C`` channels, ``V`` vocabulary, ``T`` maximum target positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmlp_core import CrossTokenLinear, causal, fold_affine_into_linear
from resmlp_core.token_mixers import GatedTokenMixer, TokenMixer

from .modules import cross_attend, key_values, padding_bias


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8 (int8 weights,
    activations quantized on the fly per batch; fbgemm on x86), for CPU inference. The
    token-mixing matrices, embeddings and norms stay float32, and so does the hybrid encoder's
    self-attention (fairseq's, which reads its weights as tensors)."""
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "qnnpack"
    spec = {nn.Linear: torch.ao.quantization.default_dynamic_qconfig}
    # fairseq's own self-attention (the hybrid encoder's) reads its projections' tensors directly: float
    spec.update({name: None for name, _ in model.named_modules() if ".self_attn." in name})
    return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


# --- the folded decoder and its step -----------------------------------------------------------


def _affine(norm: nn.Module):
    """``(alpha, beta)`` ``(C,)`` of an Affine pre-normalisation; None for a norm with statistics."""
    if not (hasattr(norm, "alpha") and hasattr(norm, "beta")):
        return None
    return norm.alpha.detach().reshape(-1), norm.beta.detach().reshape(-1)


def _require_affine(*norms: nn.Module):
    affines = [_affine(norm) for norm in norms]
    if any(a is None for a in affines):
        raise ValueError("only models with Affine pre-normalisations (--norm affine) fold")
    return affines


def _linear(weight: Tensor, bias: Optional[Tensor]) -> nn.Linear:
    layer = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer.requires_grad_(False)


class _FoldedMixerSteps(nn.Module):
    """What every folded token mixer's step reads: :meth:`step_inputs`, the history rows from
    :meth:`first_row` to position ``t`` plus :meth:`fixed_step_inputs`, the tensors that depend
    on ``t`` only (the same for every batch: the ONNX engine converts them once per position)."""

    def first_row(self, t: int) -> int:
        """The first history row a step at position ``t`` reads (0: the zero row)."""
        return 0

    def fixed_step_inputs(self, t: int) -> Tuple[Tensor, ...]:  # pragma: no cover - every mixer has its own
        raise NotImplementedError

    def step_inputs(self, history: Tensor, t: int) -> Tuple[Tensor, ...]:
        """What :meth:`step` reads at position ``t``: ``past`` ``(P, N, C)``, the rows
        ``first_row(t) .. t`` of ``history`` ``(1 + T, N, C)`` (a view), then
        :meth:`fixed_step_inputs`."""
        return (history[self.first_row(t) : t + 1], *self.fixed_step_inputs(t))


class FoldedCrossTokenLinear(_FoldedMixerSteps):
    """The token-mixing branch of a decoder layer folded for incremental decoding: the Affine
    pre-normalisation ``Aff(x) = a * x + b``, the causal cross-token linear layer ``A`` with bias
    ``c`` (:class:`~resmlp_core.CrossTokenLinear`) and the LayerScale ``g``.

    They are linear, so ``g * (sum_{j<=t} A[t, j] Aff(x_j) + c_t) = (g * a) * (sum_{j<=t} A[t, j]
    x_j) + g * (b * sum_{j<=t} A[t, j] + c_t)``: the history holds the raw inputs ``x_j``, the
    second term is a constant per position (``const``, ``(T, C)``).

    The step is in two parts, so that it traces to ONNX with the state as graph inputs:
    :meth:`step_inputs` reads what position ``t`` needs from the layer's history (Python: views,
    nothing copied), :meth:`step` computes (the same code in PyTorch and in the ONNX graph).
    History layout (:class:`History`): ``(1 + T, N, C)``, row 0 zeros and the input at position
    ``j`` in row ``j + 1``, so that the first step reads a past of one row like the others.

    A token mixer of another kind joins the folded engines with a class of its own with these
    members (``STEP_INPUTS``, :meth:`fixed_step_inputs`, :meth:`step`, and :meth:`first_row` when it
    reads a band of the history; built from the decoder layer) in :data:`FOLDED_TOKEN_MIXERS`.
    """

    #: the tensors :meth:`step_inputs` returns, in order, with their dynamic axes (the ONNX step
    #: graph has one input of each per layer, ``<name>_<layer>``)
    STEP_INPUTS = {"past": {0: "t", 1: "N"}, "row": {0: "t"}, "diag": {}, "const": {}}

    def __init__(self, layer: nn.Module):
        super().__init__()
        mixer, (alpha, beta) = layer.token_mixer, _require_affine(layer.token_norm)[0]
        g = layer.token_scale.detach()
        with torch.no_grad():
            A = causal(mixer.weight.detach())  # (T, T)
            # row t: [0, A[t, 0], ..., A[t, t], 0, ...], the weights of the history rows, A[t, t] at t + 1
            self.register_buffer("rows", torch.cat([A.new_zeros(A.size(0), 1), A], dim=1))  # (T, 1 + T)
            self.register_buffer("scale", g * alpha)  # (C,)
            self.register_buffer("const", g * (A.sum(1, keepdim=True) * beta + mixer.bias.detach()[:, None]))  # (T, C)

    @property
    def weight(self) -> Tensor:
        """``(T, T)`` the causal mixing matrix ``A`` (lower triangle)."""
        return self.rows[:, 1:]

    def fixed_step_inputs(self, t: int) -> Tuple[Tensor, ...]:
        """What :meth:`step` reads at position ``t`` besides ``past`` ``(t + 1, N, C)`` (the
        history's zero row and positions ``0 .. t - 1``, :meth:`step_inputs`): ``row`` ``(t + 1,)``
        their weights (0 for the zero row), ``diag`` ``(1,)`` the weight ``A[t, t]`` of position
        ``t`` itself, ``const`` ``(C,)``."""
        row = self.rows[t]
        return row[: t + 1], row[t + 1 : t + 2], self.const[t]

    def step(self, x: Tensor, past: Tensor, row: Tensor, diag: Tensor, const: Tensor) -> Tuple[Tensor, Tensor]:
        """``x`` ``(..., C)``, the layer's input at position ``t`` for ``N`` hypotheses (any
        leading shape), and :meth:`step_inputs` -> ``(branch, entry)``: the branch's output
        ``(..., C)`` (LayerScale included: the layer adds it to ``x``) and what the history keeps
        of position ``t`` (row ``t + 1``): ``x`` itself."""
        mixed = torch.addcmul(torch.matmul(row, past.view(past.size(0), -1)).view(x.shape), diag, x)
        return torch.addcmul(const, mixed, self.scale), x


class _FoldedStudyMixer(_FoldedMixerSteps):
    """What the folded steps of the study's mixers (:class:`FoldedTokenMixer`,
    :class:`FoldedDynamicTokenMixer`) share: reading the decoder layer, the gate's input projection
    with the Affine folded in, the gate's step and the band's first history row."""

    def _fold_branch(self, layer: nn.Module) -> Tuple[Tensor, Tensor, Tensor, nn.Module]:
        """Set ``gate``, ``heads``, ``kernel`` and, with a gate, the folded ``in_proj`` (and
        ``v_norm``); return the token norm's Affine ``alpha``, ``beta`` ``(C,)``, the LayerScale
        ``g`` ``(C,)`` and the inner :class:`~resmlp_core.token_mixers.TokenMixer`."""
        (alpha, beta), = _require_affine(layer.token_norm)
        mixer = layer.token_mixer
        self.gate = getattr(mixer, "gate", "none")
        inner = mixer.mixer if self.gate != "none" else mixer
        self.heads, self.kernel = inner.heads, inner.kernel
        if self.gate != "none":
            with torch.no_grad():
                self.in_proj = _linear(*fold_affine_into_linear(mixer.in_proj.weight.detach(),
                                                                mixer.in_proj.bias.detach(), alpha, beta))
            self.v_norm = mixer.v_norm
        return alpha, beta, layer.token_scale.detach(), inner

    def _gated(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """A gated mixer's input at one position and its multiplier: ``(a * sigmoid(b), None)``
        with ``glu``, ``(LayerNorm(v), u)`` with ``sgu``."""
        half = self.in_proj.out_features // 2  # a constant: a traced chunk is shape arithmetic in the ONNX graph
        projected = self.in_proj(x)
        a, b = projected[..., :half], projected[..., half:]
        return (a * torch.sigmoid(b), None) if self.gate == "glu" else (self.v_norm(b), a)

    def first_row(self, t: int) -> int:
        """The first history row a step at position ``t`` reads: 0 without a band; with a band of
        ``K``, the row of position ``t - K + 1`` (at least one row)."""
        return max(0, min(t, t - self.kernel + 2)) if self.kernel else 0


class FoldedTokenMixer(_FoldedStudyMixer):
    """The token-mixing branch of a decoder layer whose mixer has the study's options
    (:class:`~resmlp_core.token_mixers.TokenMixer`: heads, relative positions, band, softmax rows;
    optionally inside a :class:`~resmlp_core.token_mixers.GatedTokenMixer`), folded for
    incremental decoding as :class:`FoldedCrossTokenLinear`, with the same members.

    A decoder never sees padding (every hypothesis has the same length), so the mixing weights of
    every output position are fixed: ``M`` ``(H, T, T)`` (:meth:`TokenMixer.mixing_weights`,
    softmax rows included) is computed once. Head ``h`` mixes channels ``h*R .. (h+1)*R - 1``.

    * no gate: the history holds the raw inputs ``x_j`` and, as for the paper's layer,
      ``g * (sum_j M[h, t, j] Aff(x_j) + c_t) = (g * a) * (sum_j M[h, t, j] x_j) + const[t]``;
    * ``glu``: the Affine folds into the input projection; the history holds ``z_j = a * sigmoid(b)``,
      output ``g * (sum_j M z_j + c_t)``;
    * ``sgu``: the history holds ``z_j = LayerNorm(v_j)``, output ``g * u_t * (sum_j M z_j + c_t)``.

    With a band of ``K``, a step reads the last ``K - 1`` rows of the history only
    (:meth:`step_inputs`), as fairseq's incremental path keeps ``K - 1`` inputs
    (:class:`~resmlp_core.token_mixers.TokenMixer`).
    """

    STEP_INPUTS = {"past": {0: "t", 1: "N"}, "row": {1: "t"}, "diag": {}, "const": {}}

    def __init__(self, layer: nn.Module):
        super().__init__()
        alpha, beta, g, inner = self._fold_branch(layer)
        with torch.no_grad():
            positions = torch.arange(inner.num_tokens)
            M = inner.mixing_weights(positions, positions).detach()  # (H, T, T), causal
            self.register_buffer("rows", torch.cat([M.new_zeros(*M.shape[:2], 1), M], dim=2))  # (H, T, 1 + T)
            bias = inner.bias.detach()[:, None]  # (T, 1)
            if self.gate == "none":
                group_sums = M.sum(2).repeat_interleave(g.numel() // self.heads, dim=0).t()  # (T, C)
                self.register_buffer("scale", g * alpha)
                self.register_buffer("const", g * (group_sums * beta + bias))
            else:
                self.register_buffer("scale", g.clone())
                self.register_buffer("const", g * bias.expand(-1, g.numel()).clone())  # (T, C)

    @property
    def weight(self) -> Tensor:
        """``(H, T, T)`` the causal mixing weights ``M``."""
        return self.rows[:, :, 1:]

    def fixed_step_inputs(self, t: int) -> Tuple[Tensor, ...]:
        """As :meth:`FoldedCrossTokenLinear.fixed_step_inputs`, per head: ``row`` ``(H, P)``, ``diag``
        ``(H, 1)``, ``const`` ``(C,)``, for a ``past`` of ``P = t + 1`` history rows (the zero row
        and positions ``0 .. t - 1``), or with a band of ``K`` only the rows of positions
        ``t - K + 1 .. t - 1`` (at least one row, :meth:`first_row`): a banded step reads ``K - 1``
        inputs, not the prefix."""
        row = self.rows[:, t]
        return row[:, self.first_row(t) : t + 1], row[:, t + 1 : t + 2], self.const[t]

    def step(self, x: Tensor, past: Tensor, row: Tensor, diag: Tensor, const: Tensor) -> Tuple[Tensor, Tensor]:
        """``x`` ``(..., C)`` and :meth:`step_inputs` -> ``(branch, entry)`` (see the class)."""
        entry, u = (x, None) if self.gate == "none" else self._gated(x)
        shape = (*entry.shape[:-1], self.heads, entry.size(-1) // self.heads)
        groups = past.view(past.size(0), -1, self.heads, shape[-1])  # (t + 1, N, H, R)
        mixed = torch.einsum("hs,snhr->nhr", row, groups).reshape(shape) + diag * entry.reshape(shape)
        mixed = mixed.reshape(entry.shape)
        branch = torch.addcmul(const, mixed, self.scale)
        return (branch if u is None else u * branch), entry


class FoldedDynamicTokenMixer(_FoldedStudyMixer):
    """The token-mixing branch of a decoder layer whose mixer has dynamic weights
    (:class:`~resmlp_core.token_mixers.TokenMixer` with ``weights="dynamic"``: relative positions,
    rows not normalised; optionally gated), for incremental decoding with the members of
    :class:`FoldedCrossTokenLinear`.

    Position ``t`` mixes with weights that depend on its own mixer input ``z_t``:
    ``M[h, t, j] = w_h[t - j] + (P z_t)_h[t - j]``, so they cannot be computed in advance. The
    history holds the mixer's inputs ``z_j`` (``Aff(x_j)`` without a gate; ``a * sigmoid(b)`` with
    ``glu``; ``LayerNorm(v_j)`` with ``sgu``); a step predicts the kernel ``(N, H, W)`` over the
    offsets, reads it at the offsets of the history rows it mixes (``offsets``; ``reach`` is 0
    for the zero row and outside the band) and returns ``g * (sum_j M z_j + c_t)`` (times ``u_t``
    with ``sgu``). With a band of ``K`` a step reads the last ``K - 1`` rows, as
    :class:`FoldedTokenMixer`.
    """

    STEP_INPUTS = {"past": {0: "t", 1: "N"}, "offsets": {0: "t"}, "reach": {0: "t"}, "const": {}}

    def __init__(self, layer: nn.Module):
        super().__init__()
        alpha, beta, g, inner = self._fold_branch(layer)
        if inner.normalize != "none":
            raise ValueError("the folded decoder (engine='fast' or 'onnx') has no step for dynamic token-mixing "
                             "weights with softmax rows: decode with engine='exact'")
        self.dynamic_proj = inner.dynamic_proj
        with torch.no_grad():
            self.register_buffer("kernel_weight", inner.weight.detach().clone())  # (H, W): w_h[d]
            width, T = inner.weight.size(1), inner.num_tokens
            t, r = torch.arange(T)[:, None], torch.arange(T + 1)[None, :]
            offset = t + 1 - r  # history row r holds position r - 1 (row 0: the zero row)
            self.register_buffer("offsets", offset.clamp(0, width - 1))  # (T, 1 + T)
            self.register_buffer("reach", ((r >= 1) & (offset >= 0) & (offset < width)).float())
            self.register_buffer("scale", g.clone())
            self.register_buffer("const", g * inner.bias.detach()[:, None].expand(-1, g.numel()).clone())  # (T, C)
            if self.gate == "none":
                self.register_buffer("alpha", alpha.clone())
                self.register_buffer("beta", beta.clone())

    @property
    def weight(self) -> Tensor:
        """``(H, T, T)`` the static part of the causal mixing weights (the weights at a zero input)."""
        positions = torch.arange(self.offsets.size(0))
        offsets = positions[:, None] - positions[None, :]
        inside = (offsets >= 0) & (offsets < self.kernel_weight.size(1))
        return self.kernel_weight[:, offsets.clamp(0, self.kernel_weight.size(1) - 1)] * inside

    def fixed_step_inputs(self, t: int) -> Tuple[Tensor, ...]:
        """As :meth:`FoldedTokenMixer.fixed_step_inputs`, with the offsets of the ``P`` rows of
        ``past`` instead of their weights: ``offsets`` ``(P,)`` int64, ``reach`` ``(P,)``, ``const``
        ``(C,)``."""
        first = self.first_row(t)
        return self.offsets[t, first : t + 1], self.reach[t, first : t + 1], self.const[t]

    def step(self, x: Tensor, past: Tensor, offsets: Tensor, reach: Tensor, const: Tensor) -> Tuple[Tensor, Tensor]:
        """``x`` ``(..., C)`` and :meth:`step_inputs` -> ``(branch, entry)`` (see the class)."""
        entry, u = (torch.addcmul(self.beta, x, self.alpha), None) if self.gate == "none" else self._gated(x)
        # shapes from the layer's constants, not from tensor sizes: a traced size is shape arithmetic
        # in the ONNX graph (a few nodes per reshape)
        H, W = self.kernel_weight.shape
        C = self.scale.numel()
        z = entry.reshape(-1, H, C // H)  # (N, H, R)
        kernel = self.kernel_weight + self.dynamic_proj(entry.reshape(-1, C)).view(-1, H, W)
        rows = kernel.index_select(2, offsets) * reach  # (N, H, P)
        groups = past.unflatten(2, (H, C // H))  # (P, N, H, R)
        # a batched (1, P) x (P, R) product per hypothesis and head: in ONNX Runtime a Transpose and a
        # MatMul, about twice as fast as the Einsum "nhs,snhr->nhr" (512 hypotheses, 16 rows, one thread)
        mixed = torch.matmul(rows.unsqueeze(2), groups.permute(1, 2, 0, 3)).squeeze(2) + kernel[:, :, :1] * z
        branch = torch.addcmul(const, mixed.view_as(entry), self.scale)
        return (branch if u is None else u * branch), entry


def _fold_study_mixer(layer: nn.Module) -> nn.Module:
    """:class:`FoldedDynamicTokenMixer` for a mixer with dynamic weights, else :class:`FoldedTokenMixer`."""
    inner = getattr(layer.token_mixer, "mixer", layer.token_mixer)  # inside a GatedTokenMixer or not
    return FoldedDynamicTokenMixer(layer) if inner.dynamic else FoldedTokenMixer(layer)


#: the folded incremental step of each kind of token mixer (by the class of ``layer.token_mixer``),
#: built from the decoder layer (the mixer with its norm and LayerScale)
FOLDED_TOKEN_MIXERS = {CrossTokenLinear: FoldedCrossTokenLinear, TokenMixer: _fold_study_mixer,
                       GatedTokenMixer: _fold_study_mixer}


def fold_token_mixing(layer: nn.Module) -> nn.Module:
    """The token-mixing branch of decoder ``layer`` folded (:data:`FOLDED_TOKEN_MIXERS`)."""
    folded = FOLDED_TOKEN_MIXERS.get(type(layer.token_mixer))
    if folded is None:
        raise ValueError(f"the folded decoder (engine='fast' or 'onnx') has no step for the token mixer "
                         f"{type(layer.token_mixer).__name__}: decode with engine='exact', or add its folded step to "
                         "resmlp_mt.fast_generate.FOLDED_TOKEN_MIXERS")
    return folded(layer)


class FoldedDecoderLayer(nn.Module):
    """One decoder layer for incremental decoding with every per-channel multiplier folded away.

    The Affine pre-normalisations and LayerScale vectors are linear, so they move into the
    neighbouring weights (as the vision model's ``fold``): the token-mixing branch into
    ``token_mixer`` (:func:`fold_token_mixing`); the cross-attention's Affine and its
    ``1/sqrt(d)`` into ``q_proj``, its LayerScale into ``out_proj``; the channel MLP's Affine
    into ``fc1``, its LayerScale into ``fc2``. What is left per step: 4 matrix products, the
    attention and 3 residual adds (:meth:`step`). Equal to the unfolded layer up to float rounding.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        cross, channel = _require_affine(layer.cross_attn_norm, layer.channel_norm)
        self.token_mixer = fold_token_mixing(layer)
        with torch.no_grad():
            attn = layer.cross_attn
            self.num_heads, self.head_dim, self.scaling = attn.num_heads, attn.head_dim, 1.0  # see cross_attend
            qw, qb = fold_affine_into_linear(attn.q_proj.weight.detach(), attn.q_proj.bias.detach(), *cross)
            self.q_proj = _linear(attn.scaling * qw, attn.scaling * qb)
            self.k_proj, self.v_proj = attn.k_proj, attn.v_proj  # applied once per sentence (key_values)
            g2 = layer.cross_attn_scale.detach()
            self.out_proj = _linear(g2[:, None] * attn.out_proj.weight.detach(), g2 * attn.out_proj.bias.detach())
            mlp = layer.channel_mlp
            self.fc1 = _linear(*fold_affine_into_linear(mlp.fc1.weight.detach(), mlp.fc1.bias.detach(), *channel))
            self.activation_fn = mlp.activation_fn
            g3 = layer.channel_scale.detach()
            self.fc2 = _linear(g3[:, None] * mlp.fc2.weight.detach(), g3 * mlp.fc2.bias.detach())

    @property
    def mix_weight(self) -> Tensor:
        """``(T, T)`` the token mixer's causal matrix."""
        return self.token_mixer.weight

    def channel_mlp(self, x: Tensor) -> Tensor:
        """The folded channel MLP branch (Affine before, LayerScale after included)."""
        return self.fc2(self.activation_fn(self.fc1(x)))

    def step(self, x: Tensor, mixer_inputs: Sequence[Tensor], keys: Tensor, values: Tensor,
             bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """The layer at one position: ``x`` ``(n, k, C)``; ``mixer_inputs``, the token mixer's
        ``step_inputs`` for this position; ``keys`` ``(n, H, d, S)``, ``values`` ``(n, H, S, d)``
        and ``bias`` ``(n, 1, 1, S)`` or None, the sources' cross-attention inputs. Returns the
        output ``(n, k, C)`` and the token mixer's history entry of this position."""
        mixed, entry = self.token_mixer.step(x, *mixer_inputs)
        x = x + mixed
        x = x + cross_attend(self, x, keys, values, bias)
        return x + self.channel_mlp(x), entry


class FoldedDecoder(nn.Module):
    """The decoder of a ResMLP translation model, folded for incremental decoding (see
    :class:`FoldedDecoderLayer`); the final Affine and the output scale go into the output
    projection (a copy: the tied embedding stays as it is), the embedding scale into a copy of
    the embedding table. With ``--embedding-rank R`` the table is multiplied out to ``(V, d)``
    (``embed_weight``), the final Affine goes into ``project_out_dim`` ``d -> R`` and
    ``output_projection`` is ``R -> V``; without, ``project_out_dim`` is None. Built by
    :func:`fold_for_inference`; int8 quantization (:func:`quantize_int8`) applies to its linear
    layers like to the model's."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        (final,) = _require_affine(decoder.final_norm)
        self.dictionary = decoder.dictionary
        self.max_target_positions = decoder.max_positions()
        self.layers = nn.ModuleList([FoldedDecoderLayer(layer) for layer in decoder.layers])
        self.embed_positions = decoder.embed_positions
        with torch.no_grad():
            table = decoder.embed_tokens.weight.detach()
            if decoder.project_in_dim is not None:
                table = decoder.project_in_dim(table)
            self.register_buffer("embed_weight", table * decoder.embed_scale)
            out = decoder.output_projection.weight.detach() * decoder.output_scale
            if decoder.project_out_dim is None:
                self.project_out_dim = None
                self.output_projection = _linear(*fold_affine_into_linear(out, None, *final))
            else:
                self.project_out_dim = _linear(*fold_affine_into_linear(decoder.project_out_dim.weight.detach(),
                                                                        None, *final))
                self.output_projection = _linear(out, out.new_zeros(out.size(0)))  # a bias, as without

    def max_positions(self) -> int:
        return self.max_target_positions

    def embed(self, prefix: Tensor) -> Tensor:
        """``prefix`` ``(..., t + 1)``, the tokens of the hypotheses up to position ``t`` -> ``(..., C)``,
        the input of position ``t`` (its token's scaled embedding, plus its position's if any:
        then ``prefix`` is ``(N, t + 1)``)."""
        x = F.embedding(prefix[..., -1], self.embed_weight)
        if self.embed_positions is not None:
            x = x + self.embed_positions(prefix, incremental_state={}).view_as(x)
        return x

    def step(self, x: Tensor, layer_inputs: Sequence[Tuple[Sequence[Tensor], Tensor, Tensor]],
             bias: Optional[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """One decoder step, run by both folded engines (PyTorch, and ONNX Runtime as a trace):
        ``x`` ``(n, k, C)`` (:meth:`embed`); per layer, ``(mixer_inputs, keys, values)`` and the
        common ``bias`` (see :meth:`FoldedDecoderLayer.step`). Returns the logits ``(n, k, V)``
        and every layer's history entry of this position."""
        features, entries = self.step_features(x, layer_inputs, bias)
        return self.output_projection(features), entries

    def step_features(self, x: Tensor, layer_inputs: Sequence[Tuple[Sequence[Tensor], Tensor, Tensor]],
                      bias: Optional[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """:meth:`step` without the output projection: the features ``(n, k, C)`` (``(n, k, R)``
        after ``project_out_dim`` with ``--embedding-rank R``) that ``output_projection`` turns into
        logits (a vocabulary map projects them on its candidates only), and every layer's history
        entry."""
        entries = []
        for layer, (mixer_inputs, keys, values) in zip(self.layers, layer_inputs):
            x, entry = layer.step(x, mixer_inputs, keys, values, bias)
            entries.append(entry)
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        return x, entries


class FoldedModel(nn.Module):
    """A ResMLP translation model for :func:`generate`: the model's encoder as it is and a
    :class:`FoldedDecoder`. ``fold_for_inference(model)`` builds it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.encoder
        self.decoder = FoldedDecoder(model.decoder)
        self.eval()

    def decoder_steps(self, src_tokens: Tensor, beam: int, max_len: int) -> "FoldedSteps":
        """The incremental decoder of :func:`generate` for the batch ``src_tokens``."""
        return FoldedSteps(self, src_tokens, beam, max_len)


def fold_for_inference(model: nn.Module) -> FoldedModel:
    """The model with its decoder folded for :func:`generate` (faster; equal to the unfolded
    model up to float rounding, so hypotheses can differ from fairseq's where two candidates
    tie within rounding). Fold before :func:`quantize_int8`, not after."""
    return FoldedModel(model)


# --- the incremental decoders of a batch ------------------------------------------------------


class History:
    """The token-mixing history of a beam search: per decoder layer, what its token mixer keeps
    of every hypothesis at the positions decoded so far, in a preallocated ``(1 + T, N, C)``
    buffer: row 0 zeros, position ``j`` in row ``j + 1`` (time, ``N = n * k`` hypotheses,
    channels). Beam reordering copies the rows written so far into a spare buffer in one
    gather and swaps the two; when sentences finish only the written rows of the others move,
    the same way, and both buffers shrink within their memory.
    ``buffers`` are torch tensors, ``arrays`` numpy views of the same memory (for the ONNX
    engine, which binds them without a conversion per step)."""

    #: hypotheses up to which beam reordering gathers with numpy's ``take`` (``mode="clip"``: no
    #: buffering), above with torch's ``index_select``; one thread, 16 positions of 256 channels:
    #: 2.3 vs 6.5 us at 4 hypotheses, 8 vs 14 at 16, 41 vs 37 at 64, 1634 vs 955 at 512
    NUMPY_REORDER_MAX = 32

    def __init__(self, layers: int, positions: int, hypotheses: int, channels: int):
        # uninitialised but row 0: a step reads only the rows written before it, and zeroing the
        # whole buffer (max_len + 2 rows; 129 x 512 x 256 at batch 128, beam 4: 67 MB a layer)
        # cost more than the batch's history writes
        self.buffers = [torch.empty(1 + positions, hypotheses, channels) for _ in range(layers)]
        for b in self.buffers:
            b[0].zero_()
        self.spare = [torch.empty_like(b) for b in self.buffers]
        self._views()

    def _views(self) -> None:
        self.arrays = [b.numpy() for b in self.buffers]
        self.spare_arrays = [b.numpy() for b in self.spare]

    def positions(self, layer: int) -> Tensor:
        """``(T, N, C)``: layer ``layer``'s buffer from position 0 (a view)."""
        return self.buffers[layer][1:]

    def write(self, t: int, entries: Sequence[Union[Tensor, np.ndarray]]) -> None:
        """Keep every layer's entry ``(..., C)`` (``N`` hypotheses; a tensor or a numpy array) of
        position ``t``."""
        for b, a, entry in zip(self.buffers, self.arrays, entries):
            if isinstance(entry, Tensor):
                b[t + 1] = entry.reshape(b.shape[1:])
            else:  # numpy: a numpy write costs a fraction of a torch one
                a[t + 1] = entry.reshape(a.shape[1:])

    def select(self, sentences: np.ndarray, k: int, used: int) -> None:
        """Keep the ``k`` hypotheses of each sentence of ``sentences`` (int64, the others
        finished); positions ``:used`` are written."""
        rows = torch.from_numpy((sentences[:, None] * k + np.arange(k)).reshape(-1))
        for i, (b, spare) in enumerate(zip(self.buffers, self.spare)):
            # fewer hypotheses: both buffers shrink within their own memory (no allocation)
            shape = (b.size(0), rows.numel(), b.size(2))
            out, rest = (t.view(-1)[: math.prod(shape)].view(shape) for t in (spare, b))
            torch.index_select(b[: used + 1], 1, rows, out=out[: used + 1])
            self.buffers[i], self.spare[i] = out, rest
        self._views()

    def reorder(self, flat: np.ndarray, used: int) -> None:
        """Hypothesis ``i`` continues hypothesis ``flat[i]`` (int64); positions ``:used`` are written."""
        if flat.size <= self.NUMPY_REORDER_MAX:
            for a, spare in zip(self.arrays, self.spare_arrays):
                np.take(a[: used + 1], flat, axis=1, out=spare[: used + 1], mode="clip")
        else:
            index = torch.from_numpy(flat)
            for b, spare in zip(self.buffers, self.spare):
                torch.index_select(b[: used + 1], 1, index, out=spare[: used + 1])
        self.buffers, self.spare = self.spare, self.buffers
        self.arrays, self.spare_arrays = self.spare_arrays, self.arrays


class VocabularyBias(NamedTuple):
    """fairseq's masks of one step as an additive bias of the log-probabilities: ``values``
    ``(V,)`` (``-inf`` where a token is not allowed, ``-unk_penalty`` for unknown, else 0) and
    ``columns``, the tokens where it is not 0, with ``column_values``, its values there (what
    the engines add, made once per step kind). Built by :meth:`SearchRules.vocabulary_bias`."""

    values: Tensor
    columns: Tensor
    column_values: Tensor

    def add_to(self, lprobs: Tensor) -> Tensor:
        """In place on ``lprobs`` ``(..., V)``, on its ``columns`` only (the values fairseq's
        in-place masks give, without a pass over the vocabulary); returns ``lprobs``."""
        lprobs[..., self.columns] += self.column_values
        return lprobs


class Continuations(NamedTuple):
    """What a decoder step scores: ``lprobs`` ``(n, k, W)``, the log-probabilities of ``W``
    tokens per hypothesis with the step's :class:`VocabularyBias` added, and ``tokens``
    ``(n, k, W)``, which tokens; None when ``W`` is the vocabulary (column ``v`` is token ``v``:
    a tensor, for torch's top-k). A shortlist (``tokens`` given) is numpy, as the search's state."""

    lprobs: Union[Tensor, np.ndarray]
    tokens: Optional[np.ndarray]


class DecoderSteps:
    """The incremental decoder of one batch, for :func:`generate`; every engine's model returns
    one from ``model.decoder_steps(src_tokens, beam, max_len)``. It holds the token-mixing
    :class:`History` and every layer's cross-attention keys ``(n, H, d, S)`` and values
    ``(n, H, S, d)`` with the sources' padding ``bias`` ``(n, 1, 1, S)`` (or None), and follows
    the search: :meth:`select` (sentences that remain), :meth:`reorder` (beam reordering).
    Engines implement :meth:`step`; the search reads :meth:`candidates`, which an engine may
    compute itself (the ONNX engine's step graph does)."""

    def __init__(self, keys: List[Tensor], values: List[Tensor], bias: Optional[Tensor], history: History, k: int):
        self.keys, self.values, self.bias, self.history, self.k = keys, values, bias, history, k

    def step(self, tokens: np.ndarray, step: int, vocabulary_bias: VocabularyBias) -> Continuations:
        """``tokens`` ``(n, k, >= step + 1)`` int64 (the search's numpy state), the hypotheses'
        prefixes (position 0 is end-of-sentence) -> the scores of their continuations at position
        ``step``."""
        raise NotImplementedError

    def candidates(self, tokens: np.ndarray, scores: np.ndarray, step: int, rules: "SearchRules"):
        """The ``2k`` best continuations of each sentence at position ``step``: ``(scores, beams,
        tokens)``, each ``(n, 2k)`` numpy, best first, as fairseq's ``BeamSearch.step``; ``tokens``
        as for :meth:`step`, ``scores`` ``(n, k)`` the hypotheses' sums of log-probabilities. Here
        from :meth:`step`: from a shortlist per hypothesis (its best ``2k`` tokens) the sentence's
        best ``2k`` continuations are the same; over the whole vocabulary the top-k is torch's, as
        fairseq's. (The ONNX engine finds them in its step graph.)"""
        lprobs, vocabulary = self.step(tokens, step, rules.vocabulary_bias(step))
        n, k, width = lprobs.shape
        if vocabulary is None:
            if step == 0:
                flat = lprobs[:, 0, :]  # every hypothesis of a sentence is the same at the start
            else:
                flat = (lprobs + torch.from_numpy(scores).unsqueeze(-1)).view(n, k * width)
            # fairseq leaves one token of the vocabulary out ("so we never select pad")
            cand_scores, cand_indices = torch.topk(flat, k=min(2 * k, flat.size(1) - 1), dim=1)
            cand_scores, cand_indices = cand_scores.numpy(), cand_indices.numpy()
            return cand_scores, cand_indices // width, cand_indices % width
        flat = lprobs[:, 0, :] if step == 0 else (lprobs + scores[:, :, None]).reshape(n, k * width)
        cand_indices = np.argsort(-flat, axis=1, kind="stable")[:, : 2 * k]
        rows = np.arange(n)[:, None]  # (fancy indexing: numpy's take_along_axis costs ten times more here)
        cand_tokens = vocabulary.reshape(n, k * width)[rows, cand_indices]
        return flat[rows, cand_indices], cand_indices // width, cand_tokens

    def select(self, index: np.ndarray, used: int) -> None:
        """Keep the sentences ``index`` (int64; the others finished); positions ``:used`` are decoded."""
        self.history.select(index, self.k, used)
        index = torch.from_numpy(index)
        self.keys = [t.index_select(0, index) for t in self.keys]
        self.values = [t.index_select(0, index) for t in self.values]
        if self.bias is not None:
            self.bias = self.bias.index_select(0, index)

    def reorder(self, flat: np.ndarray, used: int) -> None:
        """Hypothesis ``i`` continues hypothesis ``flat[i]`` (int64, of ``n * k``); positions ``:used``
        are decoded."""
        self.history.reorder(flat, used)


class _TorchSteps(DecoderSteps):
    """Decoder steps in PyTorch: the encoder runs here, each layer's keys and values once
    (:func:`~resmlp_mt.modules.key_values` of ``attentions[i]``). :meth:`step` returns the full
    log-probabilities (a shortlist as the ONNX steps return measured 5-8% slower here: torch's
    ``logsumexp`` plus ``topk`` cost more than the fused ``log_softmax`` plus the score pass)."""

    def __init__(self, model, attentions: Sequence[nn.Module], src_tokens: Tensor, k: int, max_len: int):
        enc = model.encoder(src_tokens)
        encoder_out, padding_mask = enc["encoder_out"][0], enc["encoder_padding_mask"][0]
        keys, values = zip(*[key_values(attn, encoder_out) for attn in attentions])
        bias = padding_bias(padding_mask) if padding_mask is not None and padding_mask.any() else None
        S, B, C = encoder_out.shape
        super().__init__(list(keys), list(values), bias, History(len(attentions), max_len + 1, B * k, C), k)
        self.decoder = model.decoder


class ExactSteps(_TorchSteps):
    """Decoder steps of a fairseq ResMLP model as trained (float or :func:`quantize_int8`):
    fairseq's arithmetic, each layer's :meth:`~resmlp_mt.modules.ResMLPDecoderLayer.step`
    (``ResMLPTranslationModel.decoder_steps``)."""

    def __init__(self, model, src_tokens: Tensor, k: int, max_len: int):
        super().__init__(model, [layer.cross_attn for layer in model.decoder.layers], src_tokens, k, max_len)

    def step(self, tokens: np.ndarray, step: int, vocabulary_bias: VocabularyBias) -> Continuations:
        decoder, (n, k), tokens = self.decoder, tokens.shape[:2], torch.from_numpy(tokens)
        x = decoder.embed(tokens.view(n * k, -1)[:, : step + 1], incremental_state={})[0].view(n, k, -1)
        for i, layer in enumerate(decoder.layers):
            x = layer.step(x, self.history.positions(i), step, self.keys[i], self.values[i], self.bias)
        logits = decoder.output_layer(decoder.final_norm(x))
        return Continuations(vocabulary_bias.add_to(F.log_softmax(logits.float(), dim=-1)), None)


class FoldedSteps(_TorchSteps):
    """Decoder steps of a :class:`FoldedModel` (float or :func:`quantize_int8`):
    :meth:`FoldedDecoder.step`."""

    def __init__(self, model: FoldedModel, src_tokens: Tensor, k: int, max_len: int):
        super().__init__(model, model.decoder.layers, src_tokens, k, max_len)

    def step(self, tokens: np.ndarray, step: int, vocabulary_bias: VocabularyBias) -> Continuations:
        decoder, (n, k), tokens = self.decoder, tokens.shape[:2], torch.from_numpy(tokens)
        x = decoder.embed(tokens.view(n * k, -1)[:, : step + 1]).view(n, k, -1)
        layer_inputs = [(layer.token_mixer.step_inputs(history, step), keys, values)
                        for layer, history, keys, values in zip(decoder.layers, self.history.buffers, self.keys,
                                                                self.values)]
        logits, entries = decoder.step(x, layer_inputs, self.bias)
        self.history.write(step, entries)
        return Continuations(vocabulary_bias.add_to(F.log_softmax(logits.float(), dim=-1)), None)


# --- the search ---------------------------------------------------------------------------------


@dataclass
class SearchRules:
    """fairseq's rules of the beam search, in one place: the beam ``k``, the lengths (a
    hypothesis ends at ``min_len`` tokens at the earliest, ``max_len`` at the latest: then only
    end-of-sentence), the length penalty and fairseq's masks of the vocabulary (padding never,
    unknown penalised by ``unk_penalty``)."""

    k: int
    min_len: int
    max_len: int
    lenpen: float
    unk_penalty: float
    eos: int
    pad: int
    unk: int
    vocab_size: int
    _biases: Dict[Tuple[bool, bool], VocabularyBias] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, decoder, src_len: int, beam: int, max_len_a: float, max_len_b: int, min_len: int, lenpen: float,
           unk_penalty: float) -> "SearchRules":
        """The rules for a batch of sources of ``src_len`` tokens and ``decoder`` (its dictionary
        and maximum positions), with fairseq's options."""
        d = decoder.dictionary
        max_len = min(int(max_len_a * src_len + max_len_b), decoder.max_positions() - 1)
        return cls(beam, min_len, max_len, lenpen, unk_penalty, d.eos(), d.pad(), d.unk(), len(d))

    def vocabulary_bias(self, step: int) -> VocabularyBias:
        """fairseq's masks at position ``step`` (``SequenceGenerator._generate``, in its order)."""
        key = (step >= self.max_len, step < self.min_len)
        if key not in self._biases:
            values = torch.zeros(self.vocab_size)
            values[self.pad] = -math.inf
            values[self.unk] -= self.unk_penalty
            if step >= self.max_len:
                values[: self.eos] = -math.inf
                values[self.eos + 1 :] = -math.inf
            if step < self.min_len:
                values[self.eos] = -math.inf
            columns = values.nonzero(as_tuple=True)[0]
            self._biases[key] = VocabularyBias(values, columns, values[columns])
        return self._biases[key]

    def final_score(self, score: Tensor, step: int) -> Tensor:
        """The score of a hypothesis finished at ``step`` (``step + 1`` tokens with its
        end-of-sentence) from its sum of log-probabilities."""
        return score / (step + 1) ** self.lenpen


@torch.inference_mode()
def generate(
    model,
    src_tokens: Tensor,
    beam: int = 4,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 1,
    lenpen: float = 1.0,
    unk_penalty: float = 0.0,
) -> List[List[Dict[str, Tensor]]]:
    """Beam search with a ResMLP translation model (see the module docstring).

    ``model``: a fairseq ResMLP model (fairseq's arithmetic: the same hypotheses as
    ``SequenceGenerator``), a :class:`FoldedModel` or an ONNX decoder
    (:class:`resmlp_mt.onnx_decoder.OnnxModel`), float or int8: anything with a ``decoder``
    (dictionary, maximum positions) and ``decoder_steps`` (:class:`DecoderSteps`).

    ``src_tokens`` ``(B, S)`` (either padding side, ending in end-of-sentence). Returns, per
    sentence, its ``beam`` finished hypotheses sorted best first, each a dict with ``tokens``
    (ending in end-of-sentence, as fairseq) and ``score``.

    The search's own state (prefixes, scores, which hypotheses continue) is in numpy: its arrays
    are a few numbers per sentence, where a numpy operation costs about a microsecond and a torch
    one several; at batch 1 that bookkeeping took about as long as the decoder step.
    """
    bsz, src_len = src_tokens.shape
    rules = SearchRules.of(model.decoder, src_len, beam, max_len_a, max_len_b, min_len, lenpen, unk_penalty)
    k, eos, max_len = rules.k, rules.eos, rules.max_len
    steps = model.decoder_steps(src_tokens, k, max_len)

    tokens = np.full((bsz, k, max_len + 2), rules.pad, dtype=np.int64)
    tokens[:, :, 0] = eos
    scores = np.zeros((bsz, k), dtype=np.float32)  # cumulative log-probabilities
    ignore = np.zeros((bsz, k), dtype=bool)  # hypotheses that are dead ends (fewer than k candidates continued)
    ignoring = False  # ignore.any()
    finalized: List[List[Dict[str, Tensor]]] = [[] for _ in range(bsz)]
    alive = np.arange(bsz)  # original index of each row still searched
    cand_offsets = np.arange(2 * k)
    first_rows = np.arange(bsz)[:, None] * k  # (n, 1): each sentence's first hypothesis in the rows of n * k

    for step in range(max_len + 1):
        n = alive.size
        cand_scores, cand_beams, cand_tokens = steps.candidates(tokens, scores, step, rules)

        # finish the hypotheses that end here, among the top k candidates (most steps have none:
        # one test, the masks only when there may be)
        checking = ignoring or eos in cand_tokens[:, :k]
        ending = False
        finished_rows: List[int] = []
        if checking:
            eos_mask = (cand_tokens == eos) & (cand_scores != -math.inf)
            if ignoring:
                eos_mask[:, :k][ignore] = False
            ending = bool(eos_mask[:, :k].any())
        if ending:
            rows, cols = eos_mask[:, :k].nonzero()
            # the step's final scores in one division, as fairseq's (a tensor each: views of it)
            final_scores = rules.final_score(torch.from_numpy(cand_scores[rows, cols]), step).unbind()
            for r, c, score in zip(rows.tolist(), cols.tolist(), final_scores):
                sent = int(alive[r])
                if len(finalized[sent]) < k:
                    hyp = tokens[r, cand_beams[r, c], 1 : step + 2].copy()
                    hyp[step] = eos
                    finalized[sent].append({"tokens": torch.from_numpy(hyp), "score": score})
            finished_rows = [r for r in sorted(set(rows.tolist())) if len(finalized[int(alive[r])]) >= k]
        if step >= max_len:
            break
        if finished_rows:
            if len(finished_rows) == n:
                break
            keep = np.ones(n, dtype=bool)
            keep[finished_rows] = False
            index = keep.nonzero()[0]
            alive, eos_mask, ignore = alive[index], eos_mask[index], ignore[index]
            cand_beams, cand_scores, cand_tokens = cand_beams[index], cand_scores[index], cand_tokens[index]
            tokens = tokens[index]
            steps.select(index, step + 1)
            n = index.size
            first_rows = first_rows[:n]

        # the k best candidates that did not end: they continue
        if checking:
            eos_mask[:, :k] |= ignore
            active = eos_mask * (2 * k) + cand_offsets[: eos_mask.shape[1]]  # distinct: a stable sort is torch's top-k
            active_hypos = np.argsort(active, axis=1, kind="stable")[:, :k]
            rows = np.arange(n)[:, None]
            ignore = active[rows, active_hypos] >= 2 * k
            ignoring = bool(ignore.any())
            beams = cand_beams[rows, active_hypos]  # (n, k) which hypothesis each continues
            scores, next_tokens = cand_scores[rows, active_hypos], cand_tokens[rows, active_hypos]
        else:  # no end-of-sentence among the best k and no dead end: the best k continue (the same choice)
            beams, scores, next_tokens = cand_beams[:, :k], cand_scores[:, :k], cand_tokens[:, :k]
        flat = (beams + first_rows).reshape(-1)  # rows of (n * k) hypotheses
        tokens = tokens.reshape(n * k, -1)[flat].reshape(n, k, -1)
        tokens[:, :, step + 1] = next_tokens
        steps.reorder(flat, step + 1)
    for hyps in finalized:
        hyps.sort(key=lambda h: float(h["score"]), reverse=True)
    return finalized
