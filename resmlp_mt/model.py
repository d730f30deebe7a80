"""The ResMLP encoder-decoder for translation (Touvron et al. 2021, §2 and §3.6).

"We follow the general encoder-decoder architecture from Vaswani et al., where we replace the
self-attention sublayers by the residual multi-perceptron layer. In the decoder, we adapt the
linear sublayers to the task of language modeling by constraining the matrix A to be
triangular [...]. In the decoder, we keep the cross-attention sublayers."

* Encoder: token embeddings, then N layers of [cross-token linear] and [channel MLP]
  (:class:`~resmlp_mt.modules.ResMLPEncoderLayer`), then a final norm.
* Decoder: token embeddings, then N layers of [causal cross-token linear], [encoder-decoder
  attention] and [channel MLP] (:class:`~resmlp_mt.modules.ResMLPDecoderLayer`), a final norm
  and the output projection (optionally tied to the embeddings).

Positions. The cross-token matrix ``A`` is indexed by absolute positions: row ``i`` of ``A``
holds the weights with which token ``i`` reads every other position, so the layer is not
permutation-equivariant and already knows where each token is. No positional embedding is
added by default (``--positional-embeddings none``); the paper drops them from the vision
model and reports that removing them "does not change the results" (Appendix A). Sinusoidal
or learned embeddings can be added for ablations.

Padding. ``A`` must see each sentence at the same positions whatever its batch, so both stacks
first move every sentence's tokens to the front (fairseq left-pads sources by default), zero
the padding, use ``A[:L, :L]`` for the batch's longest sentence ``L``, and put the results
back in the caller's padding layout. A sentence's encoder output and translation are therefore
the same whether it is left- or right-padded and whichever sentences share its batch.

Lengths. ``A`` is ``--max-source-positions`` (encoder) or ``--max-target-positions``
(decoder) square per layer; longer training sentences are skipped by fairseq with a count in
the log, and a longer input at generation raises an error naming the flag.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional

import torch
from fairseq import utils
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.models.transformer import TransformerEncoderBase
from fairseq.modules import FairseqDropout, PositionalEmbedding
from torch import Tensor, nn

from resmlp_core import check_state_dict_fits
from resmlp_core.token_mixers import GATES, NORMALIZATIONS, POSITIONS, WEIGHTS

from .modules import NORMS, ResMLPDecoderLayer, ResMLPEncoderLayer, build_norm
from .padding import inverse_order, left_align, restore_order

logger = logging.getLogger(__name__)

POSITIONAL_EMBEDDINGS = ("none", "sinusoidal", "learned")

#: The token-mixing options (model args) and their defaults, the paper's model.
TOKEN_MIXING_DEFAULTS = {
    "token_mixer_heads": 1,
    "token_mixer_positions": "absolute",
    "token_mixer_kernel": 0,
    "token_mixer_normalize": "none",
    "token_mixer_gate": "none",
    "token_mixer_weights": "static",
    "hybrid_encoder_attention_heads": 0,
}


def token_mixing_options(args) -> Dict[str, Any]:
    """The token-mixing flags of ``args`` set away from the paper's model, ``{"--flag": value}``
    (empty for the paper's model)."""
    return {
        "--" + name.replace("_", "-"): getattr(args, name, default)
        for name, default in TOKEN_MIXING_DEFAULTS.items()
        if getattr(args, name, default) != default
    }


def check_token_mixing_args(args) -> None:
    """Errors that name the flag, before any layer is built."""
    for side in ("encoder", "decoder"):
        dim = getattr(args, f"{side}_embed_dim")
        if args.token_mixer_heads < 1 or dim % args.token_mixer_heads:
            raise ValueError(f"--token-mixer-heads {args.token_mixer_heads} must be positive and divide "
                             f"--{side}-embed-dim {dim}")
        positions = getattr(args, f"max_{'source' if side == 'encoder' else 'target'}_positions")
        if not 0 <= args.token_mixer_kernel <= positions:
            raise ValueError(f"--token-mixer-kernel {args.token_mixer_kernel} must be between 1 and "
                             f"--max-{'source' if side == 'encoder' else 'target'}-positions {positions} (0: no band)")
    if args.token_mixer_weights == "dynamic" and args.token_mixer_positions != "relative":
        raise ValueError("--token-mixer-weights dynamic needs --token-mixer-positions relative (the predicted "
                         f"kernel is over offsets), got --token-mixer-positions {args.token_mixer_positions}")
    heads = args.hybrid_encoder_attention_heads
    if heads < 0 or (heads and args.encoder_embed_dim % heads):
        raise ValueError(f"--hybrid-encoder-attention-heads {heads} must divide --encoder-embed-dim "
                         f"{args.encoder_embed_dim} (0: no self-attention, the attention-free model)")


def build_embedding(dictionary, dim: int) -> nn.Embedding:
    """Token embeddings initialised as fairseq's Transformer: N(0, dim^-0.5), zero padding row."""
    embedding = nn.Embedding(len(dictionary), dim, padding_idx=dictionary.pad())
    nn.init.normal_(embedding.weight, mean=0, std=dim**-0.5)
    nn.init.zeros_(embedding.weight[dictionary.pad()])
    return embedding


def factor_projection(in_dim: int, out_dim: int) -> Optional[nn.Linear]:
    """The linear layer (no bias) between a factorised embedding table of rank ``R`` and the width
    ``d`` (``--embedding-rank``), either way; None when the two sizes are equal (no factorisation).
    Initialised N(0, out_dim^-0.5): a projected embedding row (``R`` -> ``d``) has the statistics of
    an unfactorised one, N(0, d^-0.5) per channel, and features taken down (``d`` -> ``R``) keep
    their scale."""
    if in_dim == out_dim:
        return None
    projection = nn.Linear(in_dim, out_dim, bias=False)
    nn.init.normal_(projection.weight, mean=0, std=out_dim**-0.5)
    return projection


class AlignedEmbedding:
    """Mixin for both stacks: token embeddings (scaled by sqrt(d) unless
    ``--no-scale-embedding``, plus positional embeddings if asked), dropout, time-first, with
    every sentence moved to the front (position 0 = its first token) as the cross-token layers
    need. The modules keep fairseq's names (``embed_tokens``, ``embed_positions``,
    ``project_in_dim``: with ``--embedding-rank R`` the table is ``(V, R)`` and a linear layer
    without bias takes its rows to the width ``d``; None otherwise).

    :meth:`embed` takes ``tokens`` ``(B, T)`` and returns ``(x, embedding, order,
    padding_mask)``: ``x`` ``(T, B, C)`` after dropout; ``embedding`` ``(B, T, C)`` before
    positions and dropout; ``order`` ``(B, T)``, the :func:`left_align` gather indices, or None
    when the batch is already aligned; ``padding_mask`` ``(T, B, 1)`` bool in aligned order, or
    None without padding. With ``incremental_state``, only the last position is embedded.
    """

    def init_embedding(self, args, embed_tokens: nn.Embedding, max_positions: int, dim: int) -> None:
        self.padding_idx = embed_tokens.padding_idx
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(dim)
        self.project_in_dim = factor_projection(embed_tokens.embedding_dim, dim)
        self.embed_positions = (
            None
            if args.positional_embeddings == "none"
            else PositionalEmbedding(max_positions, dim, self.padding_idx,
                                     learned=args.positional_embeddings == "learned")
        )
        self.dropout_module = FairseqDropout(args.dropout, module_name=type(self).__name__)

    def embed(self, tokens: Tensor, incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None):
        positions = None
        if self.embed_positions is not None:
            positions = self.embed_positions(tokens, incremental_state=incremental_state)
        order = padding_mask = None
        if incremental_state is not None:
            tokens = tokens[:, -1:]
            positions = positions[:, -1:] if positions is not None else None
        else:
            pads = tokens.eq(self.padding_idx)
            if pads.any():
                order = left_align(pads)
                if order is not None:
                    tokens = tokens.gather(1, order)
                    if positions is not None:
                        positions = positions.gather(1, order.unsqueeze(-1).expand_as(positions))
                padding_mask = tokens.eq(self.padding_idx).t().unsqueeze(-1)
        embedding = self.embed_tokens(tokens)
        if self.project_in_dim is not None:
            embedding = self.project_in_dim(embedding)
        embedding = self.embed_scale * embedding
        x = embedding if positions is None else embedding + positions
        return self.dropout_module(x).transpose(0, 1), embedding, order, padding_mask


class ResMLPEncoder(AlignedEmbedding, FairseqEncoder):
    """Embeddings, ``--encoder-layers`` ResMLP layers, final norm.

    :meth:`forward` takes ``src_tokens`` ``(B, S)`` (either padding side) and returns fairseq's
    encoder-output dict: ``encoder_out`` ``[(S, B, C)]`` (zero at padding positions, in the
    layout of ``src_tokens``), ``encoder_padding_mask`` ``[(B, S)]``, ``encoder_embedding``
    ``[(B, S, C)]``, ``encoder_states`` (every layer's output if ``return_all_hiddens``),
    ``src_tokens`` ``[]`` and ``src_lengths`` ``[(B, 1)]``.
    """

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.max_source_positions = args.max_source_positions
        self.init_embedding(args, embed_tokens, args.max_source_positions, args.encoder_embed_dim)
        self.layers = nn.ModuleList(
            [ResMLPEncoderLayer(args, args.max_source_positions) for _ in range(args.encoder_layers)]
        )
        self.final_norm = build_norm(args.norm, args.encoder_embed_dim)

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_embeddings: Optional[Tensor] = None,
    ) -> Dict[str, List[Tensor]]:
        if token_embeddings is not None:
            raise NotImplementedError("ResMLPEncoder embeds its own tokens")
        length = src_tokens.size(1)
        if length > self.max_source_positions:
            raise ValueError(
                f"source sentence of {length} tokens is longer than the model's "
                f"--max-source-positions {self.max_source_positions} (the size of its cross-token "
                "matrices): skip such sentences with --skip-invalid-size-inputs-valid-test, or "
                "train a model with a larger --max-source-positions"
            )
        x, embedding, order, padding_mask = self.embed(src_tokens)
        states = []
        for layer in self.layers:
            x = layer(x, padding_mask)
            if return_all_hiddens:
                states.append(x)
        x = self.final_norm(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask, 0.0)
        if order is not None:
            x = restore_order(x, order)
            embedding = restore_order(embedding.transpose(0, 1), order).transpose(0, 1)
            states = [restore_order(s, order) for s in states]

        src_padding_mask = src_tokens.eq(self.padding_idx)
        if src_lengths is None:
            src_lengths = (~src_padding_mask).sum(dim=1, keepdim=True)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [src_padding_mask],
            "encoder_embedding": [embedding],
            "encoder_states": states,
            "src_tokens": [],
            "src_lengths": [src_lengths],
        }

    # The output dict has the Transformer encoder's format; so does its reordering.
    reorder_encoder_out = TransformerEncoderBase.reorder_encoder_out

    def max_positions(self) -> int:
        return self.max_source_positions


class ResMLPDecoder(AlignedEmbedding, FairseqIncrementalDecoder):
    """Embeddings, ``--decoder-layers`` causal ResMLP layers with encoder-decoder attention,
    final norm, output projection.

    :meth:`forward` takes ``prev_output_tokens`` ``(B, T)`` and the encoder-output dict and
    returns ``(logits (B, T, V), {"attn": [cross-attention of the alignment layer (B, T, S)
    or None], "inner_states": [(T, B, C), ...]})``. With ``incremental_state`` only the last
    position is computed (``T = 1``) from per-layer buffers of past inputs.
    """

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        dim = args.decoder_embed_dim
        self.max_target_positions = args.max_target_positions
        self.init_embedding(args, embed_tokens, args.max_target_positions, dim)
        self.layers = nn.ModuleList(
            [ResMLPDecoderLayer(args, args.max_target_positions) for _ in range(args.decoder_layers)]
        )
        self.final_norm = build_norm(args.norm, dim)
        init_final_scale(self.final_norm, args.final_norm_init, self.embed_scale, len(dictionary))
        self.output_scale = dim**-0.5 if args.scale_output else 1.0
        rank = args.embedding_rank or dim
        self.project_out_dim = factor_projection(dim, rank)
        self.output_projection = nn.Linear(rank, len(dictionary), bias=False)
        if args.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=rank**-0.5)

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        alignment_layer: Optional[int] = None,
        src_lengths: Optional[Any] = None,
        return_all_hiddens: bool = False,
        **unused,
    ):
        x, extra = self.extract_features(
            prev_output_tokens, encoder_out, incremental_state, alignment_layer=alignment_layer
        )
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        alignment_layer: Optional[int] = None,
        **unused,
    ):
        if encoder_out is None or len(encoder_out["encoder_out"]) == 0:
            raise ValueError("ResMLPDecoder needs the encoder output (it keeps cross-attention)")
        length = prev_output_tokens.size(1)
        if length > self.max_target_positions:
            raise ValueError(
                f"target prefix of {length} tokens is longer than the model's "
                f"--max-target-positions {self.max_target_positions}"
            )
        x, _, order, state_mask = self.embed(prev_output_tokens, incremental_state)

        enc = encoder_out["encoder_out"][0]
        enc_mask = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        if enc_mask is not None and not enc_mask.any():
            enc_mask = None
        if alignment_layer is None:
            alignment_layer = len(self.layers) - 1
        attn: Optional[Tensor] = None
        inner_states: List[Optional[Tensor]] = [x]
        for idx, layer in enumerate(self.layers):
            need_attn = idx == alignment_layer and not self.training
            x, layer_attn = layer(x, enc, enc_mask, state_mask, incremental_state, need_attn=need_attn)
            inner_states.append(x)
            if need_attn and layer_attn is not None:
                attn = layer_attn.float()
        x = self.final_norm(x)
        if order is not None:
            x = restore_order(x, order)
            inner_states = [restore_order(s, order) for s in inner_states]
            if attn is not None:
                attn = attn.gather(1, inverse_order(order).unsqueeze(-1).expand_as(attn))
        return x.transpose(0, 1), {"attn": [attn], "inner_states": inner_states}

    def output_layer(self, features: Tensor) -> Tensor:
        """``features`` ``(B, T, d)`` -> logits ``(B, T, V)`` (through ``project_out_dim``,
        ``(B, T, R)``, with ``--embedding-rank R``)."""
        if self.project_out_dim is not None:
            features = self.project_out_dim(features)
        if self.output_scale != 1.0:
            features = features * self.output_scale
        return self.output_projection(features)

    def max_positions(self) -> int:
        return self.max_target_positions


FINAL_NORM_INITS = ("one", "zero", "inverse-embed-scale", "log-vocab")


def init_final_scale(norm: nn.Module, how: str, embed_scale: float, vocab_size: int = 2) -> None:
    """Initial per-channel scale of the decoder's final norm (``alpha`` of an Affine layer,
    ``weight`` of a LayerNorm), which sets how confident the first predictions are.

    The residual stream starts as the input embedding times ``embed_scale`` (sqrt(d)) plus
    small branch outputs, and the output projection is tied to the embeddings; with a scale of
    1 (``one``) the logit of the *input* token is about ``sqrt(d)`` while the others are about
    1, so the untrained model confidently predicts a copy of its input (22.7 bits of NLL per
    token on Multi30k for resmlp_mt_small, 32.5 for resmlp_mt, against 12.9 for a uniform guess).

    ``log-vocab`` (the default) starts the scale at ``(ln V - 1) / sqrt(d)``: the copy logit is
    then ``ln V - 1``, which keeps the first NLL within 1 bit of uniform (+0.65 bits for
    resmlp_mt_small, +0.55 for resmlp_mt), with the largest output scale that does so. Measured
    (results/mt_init_ablation.md, valid loss after 400 updates of the CPU recipe, En-De):
    ``one`` 5.858, ``log-vocab`` 5.868, ``inverse-embed-scale`` (1/sqrt(d), near-exactly uniform
    at the start) 6.653, ``zero`` 7.517; smaller output scales learn slower.
    """
    if how not in FINAL_NORM_INITS:
        raise ValueError(f"--final-norm-init must be one of {', '.join(FINAL_NORM_INITS)}, got {how!r}")
    scale = norm.alpha if hasattr(norm, "alpha") else norm.weight
    value = {
        "one": 1.0,
        "zero": 0.0,
        "inverse-embed-scale": 1.0 / embed_scale,
        "log-vocab": min(1.0, (math.log(vocab_size) - 1.0) / embed_scale),
    }[how]
    with torch.no_grad():
        scale.fill_(value)


@register_model("resmlp_mt")
class ResMLPTranslationModel(FairseqEncoderDecoderModel):
    """ResMLP encoder-decoder (paper §3.6). Archs: ``resmlp_mt`` (ResMLP-6), ``resmlp_mt_12``
    (ResMLP-12), ``resmlp_mt_small`` (for Multi30k-size data on a CPU).

    ``token_mixing_options``: the token-mixing flags set away from the paper's model (``{}`` for
    the paper's model; :func:`token_mixing_options`)."""

    token_mixing_options: Dict[str, Any] = {}

    @staticmethod
    def add_args(parser):
        # fmt: off
        parser.add_argument("--encoder-embed-dim", type=int, metavar="N",
                            help="encoder embedding and residual width d")
        parser.add_argument("--encoder-ffn-embed-dim", type=int, metavar="N",
                            help="hidden size of the encoder's channel MLP (4d in the paper)")
        parser.add_argument("--encoder-layers", type=int, metavar="N",
                            help="number of encoder layers")
        parser.add_argument("--decoder-embed-dim", type=int, metavar="N",
                            help="decoder embedding and residual width")
        parser.add_argument("--decoder-ffn-embed-dim", type=int, metavar="N",
                            help="hidden size of the decoder's channel MLP")
        parser.add_argument("--decoder-layers", type=int, metavar="N",
                            help="number of decoder layers")
        parser.add_argument("--decoder-attention-heads", type=int, metavar="N",
                            help="heads of the encoder-decoder attention")
        parser.add_argument("--dropout", type=float, metavar="D",
                            help="dropout on embeddings and on every residual branch")
        parser.add_argument("--attention-dropout", type=float, metavar="D",
                            help="dropout on encoder-decoder attention weights")
        parser.add_argument("--activation-dropout", type=float, metavar="D",
                            help="dropout after the channel MLP's activation")
        parser.add_argument("--activation-fn", choices=utils.get_available_activation_fns(),
                            help="activation of the channel MLP (GELU in the paper)")
        parser.add_argument("--layerscale-init", type=float, metavar="F",
                            help="initial value of every LayerScale vector (0.2 in the paper)")
        parser.add_argument("--norm", choices=NORMS,
                            help="pre-normalisation of each residual branch: affine (the paper: "
                                 "alpha * x + beta, no statistics) or layernorm")
        parser.add_argument("--positional-embeddings", choices=POSITIONAL_EMBEDDINGS,
                            help="added to the token embeddings; none by default since the "
                                 "cross-token matrix A is indexed by absolute position")
        parser.add_argument("--final-norm-init", choices=FINAL_NORM_INITS,
                            help="initial scale of the decoder's final norm: log-vocab ((ln V - 1)/sqrt(d), "
                                 "default: starts within 1 bit of the uniform NLL), inverse-embed-scale "
                                 "(1/sqrt(d)), zero, or one (starts by confidently copying the input token)")
        parser.add_argument("--scale-output", action="store_true",
                            help="multiply the decoder's output features by 1/sqrt(d) before the "
                                 "output projection (an alternative to --final-norm-init)")
        parser.add_argument("--freeze-token-mixers", action="store_true",
                            help="ablation: keep every cross-token matrix and bias at its initialisation "
                                 "(no gradient), e.g. to test their part in an optimiser's instability")
        parser.add_argument("--token-mixer-heads", type=int, metavar="H",
                            help="H token-mixing matrices, each mixing a group of C/H channels "
                                 "(1, the paper: one matrix shared by all channels)")
        parser.add_argument("--token-mixer-positions", choices=POSITIONS,
                            help="absolute (the paper: A[t, s] free for every pair of positions) or relative "
                                 "(A[t, s] = w[t - s], a Toeplitz matrix: a convolution over offsets)")
        parser.add_argument("--token-mixer-kernel", type=int, metavar="K",
                            help="band of the token mixer: only offsets |t - s| < K mix (decoder: 0 <= t - s < K, "
                                 "decoding then keeps the last K-1 inputs); 0 (default): no band")
        parser.add_argument("--token-mixer-normalize", choices=NORMALIZATIONS,
                            help="none (the paper) or softmax: each row of the mixing matrix is the softmax of "
                                 "its weights over the positions it may read (in the sentence, causal, in the band)")
        parser.add_argument("--token-mixer-gate", choices=GATES,
                            help="none (the paper); glu: Linear C->2C and GLU before mixing (LightConv); "
                                 "sgu: Linear C->2C into u, v and u * mix(LayerNorm(v)) (gMLP's spatial gating unit)")
        parser.add_argument("--token-mixer-weights", choices=WEIGHTS,
                            help="static (the paper: the mixing weights are parameters) or dynamic (with relative "
                                 "positions: each position adds a kernel over offsets predicted from its own input, "
                                 "DynamicConv's; it starts at zero, so training starts from the static mixer)")
        parser.add_argument("--hybrid-encoder-attention-heads", type=int, metavar="N",
                            help="NOT attention-free (a reference for ablations): add a self-attention sublayer "
                                 "with N heads to every encoder layer, after the token mixer; 0 (default): none")
        parser.add_argument("--no-scale-embedding", action="store_true",
                            help="do not multiply token embeddings by sqrt(d)")
        parser.add_argument("--embedding-rank", type=int, metavar="R",
                            help="factorise the token embeddings and the output projection through R dimensions "
                                 "(ALBERT's factorised embeddings): a V x R table, a linear layer R -> d after it "
                                 "in each stack and d -> R before the output projection, which costs R * V instead "
                                 "of d * V per decoded token; 0 (default): a V x d table")
        parser.add_argument("--share-decoder-input-output-embed", action="store_true",
                            help="tie the decoder's input embeddings and output projection")
        parser.add_argument("--share-all-embeddings", action="store_true",
                            help="tie encoder and decoder embeddings and the output projection "
                                 "(needs a joined dictionary, e.g. fairseq-preprocess --joined-dictionary)")
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        check_token_mixing_args(args)
        if args.embedding_rank < 0:
            raise ValueError(f"--embedding-rank {args.embedding_rank} must be positive (0: no factorisation)")
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if args.share_all_embeddings:
            if src_dict != tgt_dict:
                raise ValueError("--share-all-embeddings needs a joined dictionary "
                                 "(fairseq-preprocess --joined-dictionary)")
            if args.encoder_embed_dim != args.decoder_embed_dim:
                raise ValueError("--share-all-embeddings needs --encoder-embed-dim == --decoder-embed-dim")
            encoder_embed = decoder_embed = build_embedding(src_dict, args.embedding_rank or args.encoder_embed_dim)
            args.share_decoder_input_output_embed = True
        else:
            encoder_embed = build_embedding(src_dict, args.embedding_rank or args.encoder_embed_dim)
            decoder_embed = build_embedding(tgt_dict, args.embedding_rank or args.decoder_embed_dim)
        encoder = ResMLPEncoder(args, src_dict, encoder_embed)
        decoder = ResMLPDecoder(args, tgt_dict, decoder_embed)
        model = cls(encoder, decoder)
        model.token_mixing_options = token_mixing_options(args)
        mixers = [p for n, p in model.named_parameters() if ".token_mixer." in n]
        mixer_params = sum(p.numel() for p in mixers)
        logger.disabled = False  # fairseq-train's logging.config.dictConfig disables earlier loggers
        if args.freeze_token_mixers:
            for p in mixers:
                p.requires_grad_(False)
            logger.warning("--freeze-token-mixers: %d token-mixer parameters stay at their initialisation",
                           mixer_params)
        logger.info(
            "ResMLP token mixers sized for %d source / %d target positions: %d parameters "
            "(set --max-source-positions/--max-target-positions to the longest sentences you need)",
            args.max_source_positions, args.max_target_positions, mixer_params,
        )
        if model.token_mixing_options:
            logger.info("token mixing differs from the paper's model: %s",
                        " ".join(f"{k} {v}" for k, v in model.token_mixing_options.items()))
        return model

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
        """Load a model folder written by ``scripts/export_model.py`` and return a
        :class:`resmlp_mt.hub.Translator`: ``.translate(["A dog runs."], beam=4)``."""
        from .hub import from_pretrained

        return from_pretrained(cls, model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)

    def decoder_steps(self, src_tokens: Tensor, beam: int, max_len: int):
        """The incremental decoder of the lean beam search (:func:`resmlp_mt.fast_generate.generate`,
        ``engine="exact"``) for the batch ``src_tokens``: fairseq's arithmetic."""
        from .fast_generate import ExactSteps

        return ExactSteps(self, src_tokens, beam, max_len)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Load parameters, with a message that names what differs when the checkpoint is not
        a ResMLP translation model of the same shape."""
        if strict:
            kind = ("a ResMLP translation model" if any(".token_mixer." in k for k in state_dict)
                    else "not a ResMLP translation model")
            check_state_dict_fits(
                self.state_dict(), state_dict,
                f"checkpoint does not fit this {type(self).__name__} (the checkpoint is {kind}):",
                hints=lambda diff: ["the cross-token matrices differ in size: use the checkpoint's "
                                    "--max-source-positions/--max-target-positions"]
                if any(".token_mixer." in k for k, _, _ in diff.mismatched) else [],
                error=RuntimeError,
            )
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


def _set_default(args, name: str, value) -> None:
    if getattr(args, name, None) is None:
        setattr(args, name, value)


@register_model_architecture("resmlp_mt", "resmlp_mt")
def base_architecture(args):
    """ResMLP-6 (paper §3.6): 6 + 6 layers, d = 512, MLP 2048, LayerScale init 0.2."""
    _set_default(args, "encoder_embed_dim", 512)
    _set_default(args, "encoder_ffn_embed_dim", 4 * args.encoder_embed_dim)
    _set_default(args, "encoder_layers", 6)
    _set_default(args, "decoder_embed_dim", args.encoder_embed_dim)
    _set_default(args, "decoder_ffn_embed_dim", 4 * args.decoder_embed_dim)
    _set_default(args, "decoder_layers", args.encoder_layers)
    _set_default(args, "decoder_attention_heads", 8)
    _set_default(args, "dropout", 0.1)
    _set_default(args, "attention_dropout", 0.0)
    _set_default(args, "activation_dropout", 0.0)
    _set_default(args, "activation_fn", "gelu")
    _set_default(args, "layerscale_init", 0.2)
    _set_default(args, "norm", "affine")
    _set_default(args, "positional_embeddings", "none")
    _set_default(args, "no_scale_embedding", False)
    _set_default(args, "final_norm_init", "log-vocab")
    _set_default(args, "scale_output", False)
    _set_default(args, "freeze_token_mixers", False)
    for name, value in TOKEN_MIXING_DEFAULTS.items():
        _set_default(args, name, value)
    _set_default(args, "embedding_rank", 0)
    _set_default(args, "share_decoder_input_output_embed", False)
    _set_default(args, "share_all_embeddings", False)
    _set_default(args, "max_source_positions", 1024)
    _set_default(args, "max_target_positions", 1024)


@register_model_architecture("resmlp_mt", "resmlp_mt_12")
def resmlp_mt_12(args):
    """ResMLP-12 (paper §3.6): 12 + 12 layers, d = 512, MLP 2048."""
    _set_default(args, "encoder_layers", 12)
    _set_default(args, "decoder_layers", 12)
    base_architecture(args)


@register_model_architecture("resmlp_mt", "resmlp_mt_small")
def resmlp_mt_small(args):
    """A small model for Multi30k-size data on a CPU: 3 + 3 layers, d = 256, MLP 1024,
    4 cross-attention heads, the block design of ResMLP-6.

    LayerScale starts at 0.5 rather than the paper's 0.2: small initial values stabilise deep
    networks (CaiT), and this 3-layer model trained for ~1500 updates learns faster without.
    Validation loss on Multi30k En-De after 400 updates of scripts/train_multi30k.sh:
    init 0.2 -> 6.24, 0.5 -> 5.86, 1.0 -> 5.87 (the Transformer peer: 5.82)."""
    _set_default(args, "encoder_embed_dim", 256)
    _set_default(args, "encoder_layers", 3)
    _set_default(args, "decoder_attention_heads", 4)
    _set_default(args, "layerscale_init", 0.5)
    base_architecture(args)


@register_model_architecture("resmlp_mt", "resmlp_mt_small_deep_shallow")
def resmlp_mt_small_deep_shallow(args):
    """A student for sequence-level distillation: ``resmlp_mt_small``'s width (d = 256, MLP 1024,
    4 cross-attention heads) with a deep encoder and a shallow decoder, 6 + 1 layers (Kasai et
    al. 2021: a one-layer autoregressive decoder behind a deep encoder keeps the accuracy, and
    decoding, which runs the decoder once per token, is faster)."""
    _set_default(args, "encoder_layers", 6)
    _set_default(args, "decoder_layers", 1)
    resmlp_mt_small(args)


def _relative_glu(args) -> None:
    """The token-mixer study's best attention-free mixer on Multi30k (results/mt_token_mixers_screen.md,
    both pairs): relative positions, ``A[t, s] = w[t - s]`` (one kernel over offsets for all
    channels, as the paper's one matrix), behind a GLU input projection (``--token-mixer-positions
    relative --token-mixer-gate glu``)."""
    _set_default(args, "token_mixer_positions", "relative")
    _set_default(args, "token_mixer_gate", "glu")


@register_model_architecture("resmlp_mt", "resmlp_mt_relative_glu_small")
def resmlp_mt_relative_glu_small(args):
    """``resmlp_mt_small`` with the relative GLU token mixer (:func:`_relative_glu`)."""
    _relative_glu(args)
    resmlp_mt_small(args)


@register_model_architecture("resmlp_mt", "resmlp_mt_relative_glu")
def resmlp_mt_relative_glu(args):
    """ResMLP-6's size (6 + 6 layers, d = 512, MLP 2048) with the relative GLU token mixer
    (:func:`_relative_glu`)."""
    _relative_glu(args)
    base_architecture(args)


def _relative_glu_dynamic(args) -> None:
    """The token-mixer study's best attention-free mixer to convergence (En-De Multi30k, dropout 0.1,
    one seed; results/mt_token_mixers_dynamic_curves.md): the relative GLU mixer
    (:func:`_relative_glu`) with kernels predicted from each position's input, ``w_t = w + P x_t``
    (``--token-mixer-weights dynamic``), in 4 heads over channel groups
    (``--token-mixer-heads 4``, the setting measured at d = 256)."""
    _relative_glu(args)
    _set_default(args, "token_mixer_weights", "dynamic")
    _set_default(args, "token_mixer_heads", 4)


@register_model_architecture("resmlp_mt", "resmlp_mt_relative_glu_dynamic_small")
def resmlp_mt_relative_glu_dynamic_small(args):
    """``resmlp_mt_small`` with the relative GLU mixer and dynamic kernels, 4 heads
    (:func:`_relative_glu_dynamic`)."""
    _relative_glu_dynamic(args)
    resmlp_mt_small(args)


@register_model_architecture("resmlp_mt", "resmlp_mt_relative_glu_dynamic")
def resmlp_mt_relative_glu_dynamic(args):
    """ResMLP-6's size (6 + 6 layers, d = 512, MLP 2048) with the relative GLU mixer and dynamic
    kernels, 4 heads (:func:`_relative_glu_dynamic`; not trained at this size yet)."""
    _relative_glu_dynamic(args)
    base_architecture(args)
