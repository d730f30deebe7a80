"""Layers of the ResMLP encoder-decoder for translation.

All tensors are time-first, ``T x B x C``, as everywhere in fairseq's sequence models.

Every residual branch has the same shape (paper Eqs. 2-3)::

    x = x + layer_scale * dropout(sublayer(norm(x)))      # resmlp_core.add_scaled: one addcmul

with ``norm`` an Affine layer (``--norm affine``, the paper) or LayerNorm (``--norm layernorm``,
the paper's Table 3 ablation), and ``layer_scale`` a per-channel vector initialised to
``--layerscale-init`` (0.2 in the paper's translation models).

The token mixer is the paper's cross-token linear layer unless a ``--token-mixer-*`` option is
set (:func:`resmlp_core.token_mixers.build_token_mixer`); ``--hybrid-encoder-attention-heads``
adds a self-attention sublayer to every encoder layer (the model is then not attention-free).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from fairseq import utils
from fairseq.modules import FairseqDropout, LayerNorm, MultiheadAttention
from torch import Tensor, nn

from resmlp_core import Affine, add_scaled, layer_scale
from resmlp_core.token_mixers import build_token_mixer

NORMS = ("affine", "layernorm")


def build_norm(kind: str, dim: int) -> nn.Module:
    """The pre-normalisation of every residual branch: ``affine`` (the paper) or ``layernorm``."""
    if kind == "affine":
        return Affine(dim)
    if kind == "layernorm":
        return LayerNorm(dim)
    raise ValueError(f"--norm must be one of {', '.join(NORMS)}, got {kind!r}")


def xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    """A Linear layer initialised as fairseq's Transformer initialises its own."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ChannelMLP(nn.Module):
    """The cross-channel MLP: Linear(C, H), activation, dropout, Linear(H, C) (paper Eq. 3).

    Shapes: ``(T, B, C) -> (T, B, C)``.
    """

    def __init__(self, dim: int, hidden_dim: int, activation_fn: str, activation_dropout: float):
        super().__init__()
        self.fc1 = xavier_linear(dim, hidden_dim)
        self.activation_fn = utils.get_activation_fn(activation_fn)
        self.activation_dropout = FairseqDropout(activation_dropout, module_name=type(self).__name__)
        self.fc2 = xavier_linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(self.activation_fn(self.fc1(x))))


class ResMLPLayer(nn.Module):
    """What the encoder and decoder layers share: the token-mixing sublayer (``token_norm``,
    ``token_mixer``, ``token_scale``; causal in the decoder) and the channel sublayer
    (``channel_norm``, ``channel_mlp``, ``channel_scale``), each a LayerScale'd residual branch.
    Subclasses build them in their parameter order (:meth:`build_token_mixing`, then their own
    sublayers, then :meth:`build_channel_mixing`)."""

    def build_token_mixing(self, args, dim: int, num_tokens: int, causal: bool) -> None:
        self.token_norm = build_norm(args.norm, dim)
        self.token_mixer = build_token_mixer(
            num_tokens, dim, causal=causal, heads=args.token_mixer_heads, positions=args.token_mixer_positions,
            kernel=args.token_mixer_kernel, normalize=args.token_mixer_normalize, gate=args.token_mixer_gate,
            weights=args.token_mixer_weights,
        )
        self.token_scale = layer_scale(dim, args.layerscale_init)

    def build_channel_mixing(self, args, dim: int, hidden_dim: int) -> None:
        self.channel_norm = build_norm(args.norm, dim)
        self.channel_mlp = ChannelMLP(dim, hidden_dim, args.activation_fn, args.activation_dropout)
        self.channel_scale = layer_scale(dim, args.layerscale_init)
        self.dropout_module = FairseqDropout(args.dropout, module_name=type(self).__name__)

    def token_mixing(self, x: Tensor, padding_mask: Optional[Tensor], incremental_state=None) -> Tensor:
        """``x + token_scale * dropout(token_mixer(token_norm(x)))``; the mixer zeroes the
        normalised input at padding positions (``padding_mask``) first."""
        h = self.token_mixer(self.token_norm(x), incremental_state=incremental_state, padding_mask=padding_mask)
        return add_scaled(x, self.dropout_module(h), self.token_scale)

    def channel_mixing(self, x: Tensor) -> Tensor:
        return add_scaled(x, self.dropout_module(self.channel_mlp(self.channel_norm(x))), self.channel_scale)


class ResMLPEncoderLayer(ResMLPLayer):
    """One encoder layer: the cross-token linear sublayer, then the channel MLP; with
    ``--hybrid-encoder-attention-heads N`` (not attention-free), a self-attention sublayer of ``N``
    heads between them (``self_attn_norm``, ``self_attn``, ``self_attn_scale``), a residual branch
    like the others.

    Args of :meth:`forward`:
        x: ``(T, B, C)``, sequences aligned to the left (position 0 is each sentence's first
            token), padding at the end.
        padding_mask: ``(T, B, 1)`` bool, True at padding positions, or None.

    The normalised input is zeroed at padding positions before token mixing, so padding
    contributes nothing to real tokens (paper: "padding with zeros and extracting the
    submatrix A corresponding to the longest sequence in a batch").
    """

    def __init__(self, args, num_tokens: int):
        super().__init__()
        dim = args.encoder_embed_dim
        self.build_token_mixing(args, dim, num_tokens, causal=False)
        self.self_attn = None
        if args.hybrid_encoder_attention_heads:
            self.self_attn_norm = build_norm(args.norm, dim)
            self.self_attn = MultiheadAttention(
                dim, args.hybrid_encoder_attention_heads, dropout=args.attention_dropout, self_attention=True
            )
            self.self_attn_scale = layer_scale(dim, args.layerscale_init)
        self.build_channel_mixing(args, dim, args.encoder_ffn_embed_dim)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        x = self.token_mixing(x, padding_mask)
        if self.self_attn is not None:
            h = self.self_attn_norm(x)
            key_padding_mask = None if padding_mask is None else padding_mask[..., 0].t()
            h, _ = self.self_attn(query=h, key=h, value=h, key_padding_mask=key_padding_mask, need_weights=False)
            x = add_scaled(x, self.dropout_module(h), self.self_attn_scale)
        return self.channel_mixing(x)


def key_values(attn, encoder_out: Tensor):
    """The cross-attention keys ``(B, H, d, S)`` and values ``(B, H, S, d)`` of ``encoder_out``
    ``(S, B, C)``, for ``attn`` with ``k_proj``, ``v_proj``, ``num_heads``, ``head_dim`` (fairseq's
    ``MultiheadAttention`` or a folded decoder layer): computed once per batch for incremental
    decoding (:func:`cross_attend`)."""
    S, B, _ = encoder_out.shape
    H, d = attn.num_heads, attn.head_dim
    keys = attn.k_proj(encoder_out).view(S, B, H, d).permute(1, 2, 3, 0)
    values = attn.v_proj(encoder_out).view(S, B, H, d).permute(1, 2, 0, 3)
    return keys, values


def padding_bias(padding_mask: Tensor) -> Tensor:
    """``(B, S)`` bool -> ``(B, 1, 1, S)`` additive attention mask: ``-inf`` at padding, else 0."""
    B, S = padding_mask.shape
    return torch.zeros(B, 1, 1, S).masked_fill(padding_mask.view(B, 1, 1, S), -math.inf)


def cross_attend(attn, x: Tensor, keys: Tensor, values: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Encoder-decoder attention of ``x`` ``(B, k, C)`` with the keys ``(B, H, d, S)`` and values
    ``(B, H, S, d)`` of :func:`key_values` (the ``k`` hypotheses of each sentence read the
    sentence's keys and values by broadcasting) and ``bias`` ``(B, 1, 1, S)`` (:func:`padding_bias`)
    or None -> ``(B, k, C)``. ``attn``: fairseq's ``MultiheadAttention`` or a folded decoder layer
    (``scaling`` 1, folded into ``q_proj``)."""
    B, k, _ = x.shape
    q = attn.q_proj(x)
    if attn.scaling != 1.0:
        q = q * attn.scaling
    weights = torch.matmul(q.view(B, k, attn.num_heads, attn.head_dim).transpose(1, 2), keys)  # (B, H, k, S)
    if bias is not None:
        weights = weights + bias
    out = torch.matmul(torch.softmax(weights, dim=-1), values)  # (B, H, k, d)
    return attn.out_proj(out.transpose(1, 2).flatten(2))  # (B, k, C)


class ResMLPDecoderLayer(ResMLPLayer):
    """One decoder layer: causal cross-token linear, encoder-decoder attention, channel MLP.

    The paper keeps the Transformer's encoder-decoder attention and replaces only the
    self-attention sublayer; the order follows the Transformer decoder layer.

    Args of :meth:`forward`:
        x: ``(T, B, C)`` decoder states (``T = 1`` when decoding incrementally).
        encoder_out: ``(S, B, C_enc)``; encoder_padding_mask: ``(B, S)`` bool or None.
        padding_mask: ``(T, B, 1)`` bool, True at target padding positions, or None.
        incremental_state: fairseq's incremental decoding state, or None for a full pass.

    Returns ``(x, attn)``: new states ``(T, B, C)`` and, if ``need_attn``, the cross-attention
    weights averaged over heads ``(B, T, S)``.

    :meth:`step` is the same layer for the lean beam search (:mod:`resmlp_mt.fast_generate`,
    ``engine="exact"``): one position from a preallocated history, the cross-attention keys and
    values computed once per batch; the same arithmetic as fairseq's incremental :meth:`forward`.
    """

    def __init__(self, args, num_tokens: int):
        super().__init__()
        dim = args.decoder_embed_dim
        self.build_token_mixing(args, dim, num_tokens, causal=True)
        self.cross_attn_norm = build_norm(args.norm, dim)
        self.cross_attn = MultiheadAttention(
            dim,
            args.decoder_attention_heads,
            kdim=args.encoder_embed_dim,
            vdim=args.encoder_embed_dim,
            dropout=args.attention_dropout,
            encoder_decoder_attention=True,
        )
        self.cross_attn_scale = layer_scale(dim, args.layerscale_init)
        self.build_channel_mixing(args, dim, args.decoder_ffn_embed_dim)

    def forward(
        self,
        x: Tensor,
        encoder_out: Tensor,
        encoder_padding_mask: Optional[Tensor],
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_attn: bool = False,
    ):
        x = self.token_mixing(x, padding_mask, incremental_state)
        h, attn = self.cross_attn(
            query=self.cross_attn_norm(x),
            key=encoder_out,
            value=encoder_out,
            key_padding_mask=encoder_padding_mask,
            incremental_state=incremental_state,
            static_kv=True,
            need_weights=need_attn,
        )
        x = add_scaled(x, self.dropout_module(h), self.cross_attn_scale)
        return self.channel_mixing(x), attn

    def step(self, x: Tensor, history: Tensor, t: int, keys: Tensor, values: Tensor, bias: Optional[Tensor]) -> Tensor:
        """The layer at position ``t`` of ``N = n * k`` hypotheses (``n`` sentences, ``k`` each), in eval mode.

        ``x`` ``(n, k, C)``, the layer's input; ``history`` ``(>= t + 1, N, C)``, the token mixer's
        normalised inputs at positions ``0 .. t - 1`` (row ``t`` is written here); ``keys``,
        ``values``, ``bias``: the sources' cross-attention inputs (:func:`key_values`,
        :func:`padding_bias` or None), ``n`` sentences. Returns ``(n, k, C)``. The token mixer steps
        with its ``forward_last`` (the step of fairseq's incremental decoding, on a buffer).
        """
        h = self.token_norm(x)
        history[t] = h.view(-1, h.size(-1))
        x = add_scaled(x, self.token_mixer.forward_last(history[: t + 1]).view_as(x), self.token_scale)
        h = cross_attend(self.cross_attn, self.cross_attn_norm(x), keys, values, bias)
        return self.channel_mixing(add_scaled(x, h, self.cross_attn_scale))
