"""ResMLP image classifiers (Touvron et al. 2021), registered with timm.

Same parameter names and shapes as timm's ``MlpMixer``-based ResMLP (``stem.proj``,
``blocks.N.norm1.alpha`` shaped ``(1, 1, dim)``, ``blocks.N.linear_tokens``,
``blocks.N.mlp_channels.fc1/fc2``, ``blocks.N.ls1/ls2``, ``norm``, ``head``), so a timm
state dict loads as is; official DeiT-repo checkpoints load through
:func:`checkpoint_filter_fn`, which applies timm's own key mapping.

What differs from timm is the layout and the details of the official code:

* the residual stream is kept **token-first**, ``(N, B, C)`` (patches, batch, channels),
  from the patch embedding to the pooling. Mixing patches is then one GEMM
  ``A @ x.view(N, B * C)`` (:class:`resmlp_core.CrossTokenLinear`), with no transposes;
  the channel MLP runs on ``x.view(N * B, C)``; pooling is a mean over dim 0.
* LayerScale init per depth as the official code (S12 0.1, S24 1e-5, S36/B24 1e-6),
  truncated-normal (std 0.02) init of every linear layer, the same drop-path rate at every
  depth.
* inference folding through timm's convention (:func:`timm.utils.reparameterize_model`):
  every block becomes a :class:`FoldedResMLPBlock` (``fuse()``), and the final Affine is
  folded into the classifier (:meth:`PreHeadAffine.fuse`, :meth:`ResMLP.__setattr__`).
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Mlp, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.mlp_mixer import checkpoint_filter_fn as timm_resmlp_filter_fn
from torch import nn

from resmlp_core import (
    Affine,
    CrossTokenLinear,
    add_scaled,
    check_state_dict_fits,
    fold_affine_into_linear,
    layer_scale,
)

__all__ = [
    "ResMLP",
    "ResMLPBlock",
    "FoldedResMLPBlock",
    "PreHeadAffine",
    "checkpoint_filter_fn",
    "remap_state_dict",
    "check_state_dict_matches",
    "MODEL_NAMES",
]


def _drop_path_mask(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Per-sample keep mask for a token-first ``(N, B, C)`` tensor: shape ``(1, B, 1)``.

    Kept samples are scaled by ``1 / keep_prob`` (timm's ``scale_by_keep``), dropped ones are 0.
    """
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((1, x.shape[1], 1)).bernoulli_(keep_prob)
    return mask.div_(keep_prob) if keep_prob > 0.0 else mask


class ResMLPBlock(nn.Module):
    """One ResMLP residual block (paper Eqs. 2-3), token-first.

    ``z = x + ls1 * A(norm1(x))``; ``y = z + ls2 * mlp_channels(norm2(z))``, where ``A`` mixes
    patches (the same ``N x N`` matrix for every channel) and the MLP mixes channels.
    Stochastic depth drops a whole branch per sample, with one rate shared by both branches
    (as the official code's single ``DropPath`` module).

    Shapes: input and output ``(N, B, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        mlp_ratio: float = 4.0,
        init_values: float = 1e-4,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.norm1 = Affine(dim)
        self.linear_tokens = CrossTokenLinear(num_tokens)
        self.norm2 = Affine(dim)
        self.mlp_channels = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls1 = layer_scale(dim, init_values)
        self.ls2 = layer_scale(dim, init_values)
        self.drop_path_rate = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ls1, ls2 = self.ls1, self.ls2
        if self.training and self.drop_path_rate > 0.0:
            # The per-sample mask rides on the LayerScale vector: (1, B, 1) * (C,) -> (1, B, C).
            ls1 = ls1 * _drop_path_mask(x, self.drop_path_rate)
            ls2 = ls2 * _drop_path_mask(x, self.drop_path_rate)
        x = add_scaled(x, self.linear_tokens(self.norm1(x)), ls1)
        x = add_scaled(x, self.mlp_channels(self.norm2(x)), ls2)
        return x

    @torch.no_grad()
    def fuse(self) -> "FoldedResMLPBlock":
        """The inference form of this block; see :class:`FoldedResMLPBlock` for the algebra."""
        a1, b1 = self.norm1.alpha.flatten(), self.norm1.beta.flatten()
        a2, b2 = self.norm2.alpha.flatten(), self.norm2.beta.flatten()
        g1, g2 = self.ls1, self.ls2
        A, bias = self.linear_tokens.weight, self.linear_tokens.bias
        fc1, fc2 = self.mlp_channels.fc1, self.mlp_channels.fc2
        token_scale = a1 * g1
        fc2_weight = fc2.weight * g2[:, None]
        fc2_bias = g2 * fc2.bias if fc2.bias is not None else torch.zeros_like(g2)
        # K = (A 1)(b1 * g1)^T + bias g1^T, plus fc2's bias (see the class docstring).
        token_const = torch.outer(A.sum(1), b1 * g1) + torch.outer(bias, g1) + fc2_bias
        fc1_weight, fc1_bias = fold_affine_into_linear(fc1.weight, fc1.bias, a2, b2)
        fc1_bias = fc1_bias - fc1_weight @ fc2_bias
        return FoldedResMLPBlock(
            token_weight=A.detach().clone(),
            token_scale=token_scale,
            token_const=token_const,
            fc1_weight=fc1_weight,
            fc1_bias=fc1_bias,
            fc2_weight=fc2_weight,
            act_layer=type(self.mlp_channels.act),
        ).to(A.device)


class FoldedResMLPBlock(nn.Module):
    """Inference form of :class:`ResMLPBlock`: every Affine and LayerScale folded away.

    For one image in ``(N, C)`` layout, with ``Aff(X) = X diag(a) + 1 b^T``:

    * cross-patch sublayer: ``X + (A Aff1(X) + bias 1^T) diag(g1)``
      ``= X + (A X) diag(a1 g1) + K`` with the constant ``K = (A 1)(b1 g1)^T + bias g1^T``.
      ``a1`` cannot go into ``A`` (one matrix for all channels, deit#114): it stays as the
      per-channel ``token_scale = a1 * g1``; ``b1`` and ``bias`` become the ``(N, C)``
      buffer ``K``.
    * channel MLP: ``Z + (W2 act(W1 Aff2(Z) + c1) + c2) diag(g2)``: ``a2, b2`` fold into
      ``fc1``, ``g2`` into ``fc2``. ``fc2``'s bias ``g2 c2`` is added to ``K`` (so ``Z``
      already carries it) and subtracted back through ``fc1``'s bias; the residual add is
      then the ``beta=1`` input of ``fc2``'s GEMM: ``y = addmm(z, h, W2^T)``.

    Forward, ``x`` of shape ``(N, B, C)``:
    ``t = A @ x``, ``z = x + token_scale * t + K``, ``h = act(z W1^T + c1)``, ``y = z + h W2^T``:
    three GEMMs, the activation and two element-wise passes of width ``C``.

    Shapes: ``token_weight (N, N)``, ``token_scale (C,)``, ``token_const (N, 1, C)``,
    ``fc1`` ``(H, C)`` + ``(H,)``, ``fc2_weight (C, H)``. Input and output ``(N, B, C)``.
    """

    def __init__(
        self,
        token_weight: torch.Tensor,
        token_scale: torch.Tensor,
        token_const: torch.Tensor,
        fc1_weight: torch.Tensor,
        fc1_bias: torch.Tensor,
        fc2_weight: torch.Tensor,
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        num_tokens, dim = token_const.shape
        self.token_weight = nn.Parameter(token_weight, requires_grad=False)
        self.token_scale = nn.Parameter(token_scale, requires_grad=False)
        self.token_const = nn.Parameter(token_const.reshape(num_tokens, 1, dim), requires_grad=False)
        self.fc1 = nn.Linear(fc1_weight.shape[1], fc1_weight.shape[0])
        self.fc1.weight = nn.Parameter(fc1_weight, requires_grad=False)
        self.fc1.bias = nn.Parameter(fc1_bias, requires_grad=False)
        self.fc2 = nn.Linear(fc2_weight.shape[1], fc2_weight.shape[0], bias=False)
        self.fc2.weight = nn.Parameter(fc2_weight, requires_grad=False)
        self.act = act_layer()
        # Rows of the channel MLP per chunk at inference on the CPU: ~8 MB of fp32 hidden
        # activations (fits in the last-level cache of a server CPU; measured best on the bench machine).
        self.mlp_chunk_rows = max(64, (1 << 21) // fc1_weight.shape[0])

    def extra_repr(self) -> str:
        return (f"num_tokens={self.token_weight.shape[0]}, dim={self.token_scale.numel()}, "
                f"mlp_chunk_rows={self.mlp_chunk_rows}")

    def _act_(self, h: torch.Tensor) -> torch.Tensor:
        if isinstance(self.act, nn.GELU):
            return torch.ops.aten.gelu_(h, approximate=self.act.approximate)
        return self.act(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_tokens, batch, dim = x.shape
        # One compute dtype for every operand (the in-place GEMM below is not autocast):
        # autocast's dtype when autocast is on (CUDA bf16), else the input's (also on devices
        # without autocast, such as meta, where asking whether it is on is an error).
        device_type = x.device.type
        autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
        A, scale, const, w1, b1, w2 = (
            p if p.dtype == dtype else p.to(dtype)
            for p in (self.token_weight, self.token_scale, self.token_const, self.fc1.weight, self.fc1.bias,
                      self.fc2.weight)
        )
        x = x.to(dtype)
        t = torch.mm(A, x.reshape(num_tokens, batch * dim)).view(num_tokens, batch, dim)
        if torch.is_grad_enabled() and (x.requires_grad or self.token_weight.requires_grad):
            # autograd: out of place (in-place updates would overwrite saved activations)
            z = (torch.addcmul(x, t, scale) + const).view(num_tokens * batch, dim)
            h = self.act(torch.addmm(b1, z, w1.t()))
            return torch.addmm(z, h, w2.t()).view(num_tokens, batch, dim)
        z = torch.addcmul(x, t, scale, out=t)  # t is dead after this: reuse its memory
        z += const
        # On the CPU, the channel MLP in row chunks, updating z in place. The hidden activations
        # (4x wider than the stream) then stay small: no fresh multi-MB buffer per block (page
        # faults), and fc2 reads them back from the cache. Not on a GPU, where small GEMMs leave
        # it idle (on an H100 the chunked model ran at half the unfolded one's img/s), nor under
        # torch.compile (dozens of in-place GEMMs on views per block: minutes of compiling).
        total_rows = num_tokens * batch
        chunk = self.mlp_chunk_rows if device_type == "cpu" and not torch.compiler.is_compiling() else total_rows
        for rows in z.view(total_rows, dim).split(chunk):
            h = self._act_(torch.addmm(b1, rows, w1.t()))
            rows.addmm_(h, w2.t())
        return z


class PreHeadAffine(Affine):
    """The final Affine of ResMLP (``model.norm``), foldable into the classifier.

    Pooling is a mean over patches, which commutes with a per-channel affine map, so
    ``head(mean(Aff(X))) = head'(mean(X))`` with ``W' = W diag(alpha)`` and
    ``b' = b + W beta`` (:func:`fold_affine_into_linear`). ``fuse()`` (called by
    :func:`timm.utils.reparameterize_model`) returns this Affine marked for folding
    (:class:`AffineToFold`); the :class:`ResMLP` that owns it and its head does the fold when timm
    puts the marker in place (:meth:`ResMLP.__setattr__`). Neither module refers to the other.

    Shapes: as :class:`resmlp_core.Affine`.
    """

    def fuse(self) -> "AffineToFold":
        return AffineToFold(self)


class AffineToFold(nn.Module):
    """What :meth:`PreHeadAffine.fuse` returns: the Affine, to be folded into the linear layer
    that follows it by the module that owns both (:meth:`fold_into`). Until then it computes the
    Affine. Shapes: as :class:`resmlp_core.Affine`."""

    def __init__(self, affine: Affine):
        super().__init__()
        self.affine = affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(x)

    @torch.no_grad()
    def fold_into(self, linear: nn.Linear) -> nn.Linear:
        """A new linear layer equal to ``linear(Aff(x))`` on inputs ``(..., dim)``."""
        weight, bias = fold_affine_into_linear(linear.weight, linear.bias, self.affine.alpha.flatten(),
                                               self.affine.beta.flatten())
        folded = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device,
                           dtype=linear.weight.dtype)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
        return folded


class ResMLP(nn.Module):
    """ResMLP classifier: patch embedding, residual MLP blocks, Affine, mean pooling, linear head.

    Args:
        num_classes: classifier outputs (0: no head, ``forward`` returns pooled features).
        img_size, patch_size, in_chans: input geometry; ``N = (img_size / patch_size)^2``
            patches, fixed (the cross-patch matrix is ``N x N``).
        embed_dim, depth, mlp_ratio: width, number of blocks, channel-MLP expansion.
        init_values: LayerScale init (official: 0.1 for depth 12, 1e-5 for 24, 1e-6 beyond).
        drop_rate: dropout before the head; proj_drop_rate: dropout inside the channel MLP;
        drop_path_rate: stochastic depth, the same rate at every depth (official code).

    Shapes: ``forward`` ``(B, in_chans, H, W) -> (B, num_classes)``;
    ``forward_tokens`` ``-> (N, B, embed_dim)`` (token-first residual stream, before the final
    Affine); ``forward_features`` ``-> (B, N, embed_dim)`` (timm's layout, final Affine applied).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int = 224,
        in_chans: int = 3,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        mlp_ratio: float = 4.0,
        init_values: float = 1e-4,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False

        self.stem = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                               flatten=False)
        self.num_tokens = self.stem.num_patches
        self.blocks = nn.Sequential(
            *[
                ResMLPBlock(
                    embed_dim,
                    self.num_tokens,
                    mlp_ratio=mlp_ratio,
                    init_values=init_values,
                    proj_drop=proj_drop_rate,
                    drop_path=drop_path_rate,
                    act_layer=act_layer,
                )
                for _ in range(depth)
            ]
        )
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm = PreHeadAffine(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    def __setattr__(self, name: str, value: Any) -> None:
        """Folding the final Affine: when :func:`timm.utils.reparameterize_model` sets ``norm`` to
        the result of :meth:`PreHeadAffine.fuse`, the Affine goes into ``head`` and ``norm`` becomes
        an Identity (with no linear head, ``num_classes=0``, the Affine stays)."""
        if name == "norm" and isinstance(value, AffineToFold):
            if not isinstance(self.head, nn.Linear):
                value = value.affine
            else:
                super().__setattr__("head", value.fold_into(self.head))
                value = nn.Identity()
        super().__setattr__(name, value)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Official init: truncated normal (std 0.02) weights and zero biases for linear layers
        (``CrossTokenLinear`` does the same in its own ``reset_parameters``); the patch
        embedding keeps PyTorch's default."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Affine ``alpha``/``beta`` are shaped (1, 1, dim), so timm's rule "no decay on 1-D
        parameters and biases" would miss them; LayerScale vectors are listed for clarity."""
        return {"*.alpha", "*.beta", "*.ls1", "*.ls2"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stem", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (N, B, embed_dim)``: patch embedding and blocks, token-first."""
        x = self.stem(x)  # (B, C, h, w)
        x = x.flatten(2).permute(2, 0, 1).contiguous()  # (N, B, C): the one layout change
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm API: ``(B, C_in, H, W) -> (B, N, embed_dim)``, final Affine applied."""
        return self.norm(self.forward_tokens(x)).transpose(0, 1)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[int | List[int]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> List[torch.Tensor] | Tuple[torch.Tensor, List[torch.Tensor]]:
        """timm API (as timm's ``MlpMixer``): the outputs of the blocks ``indices`` (an int ``n``: the
        last ``n``; default: all), ``(B, C, h, w)`` (``NCHW``) or ``(B, N, C)`` (``NLC``), with the
        final Affine when ``norm``; and, unless ``intermediates_only``, :meth:`forward_features`'s output."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        x = self.stem(x).flatten(2).permute(2, 0, 1).contiguous()  # (N, B, C), as forward_tokens
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take_indices:
                y = (self.norm(x) if norm else x).permute(1, 0, 2)  # (B, N, C)
                if output_fmt == "NCHW":
                    h, w = self.stem.dynamic_feat_size((height, width))
                    y = y.reshape(batch, h, w, -1).permute(0, 3, 1, 2)
                intermediates.append(y.contiguous())
        if intermediates_only:
            return intermediates
        return self.norm(x).transpose(0, 1), intermediates

    def prune_intermediate_layers(self, indices: int | List[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """timm API: keep only the blocks up to the last of ``indices`` (for ``features_only``)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm API: ``(B, N, embed_dim)`` from :meth:`forward_features` -> logits ``(B, num_classes)``."""
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)
        if self.global_pool != "avg":
            return self.forward_head(self.norm(tokens).transpose(0, 1))
        # Pool first: the final Affine is per channel, so it commutes with the mean; it then
        # costs (B, C) instead of (N, B, C), and folds into the head.
        pooled = self.norm(tokens.mean(dim=0, keepdim=True))[0]  # (B, C)
        return self.head(self.head_drop(pooled))


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------

CLASSIFIER_KEYS = ("head.weight", "head.bias")


def check_state_dict_matches(
    state_dict: Dict[str, torch.Tensor], model: nn.Module, what: str = "checkpoint", ignore_shapes=CLASSIFIER_KEYS
) -> None:
    """Raise ``ValueError`` naming every key that does not fit ``model``
    (:func:`resmlp_core.check_state_dict_fits`).

    Lists missing keys, unexpected keys and shape mismatches. By default the classifier is left
    out of the shape check (timm drops a head of another size when ``num_classes`` differs);
    ``ignore_shapes=()`` checks every shape (a strict load).
    """
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    check_state_dict_fits(
        model.state_dict(), state_dict, f"the {what} does not fit {arch} (another architecture or size?)",
        checkpoint=what, ignore_shapes=ignore_shapes,
    )


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: the pretrained weights must be a state dict
    (:func:`vision.weights.check_state_dict`); a DINO checkpoint (``vision.dino``'s
    ``last.pth``, facebookresearch/dino's ``checkpoint.pth``) gives its teacher's backbone
    (:func:`vision.weights.dino_teacher_backbone`). The classifier follows the model: weights
    without one (a self-supervised backbone) leave the model's head at its initialisation (with
    a warning), a model without one (``num_classes=0``) drops the weights'. Then
    :func:`remap_state_dict`."""
    from .weights import check_state_dict, dino_teacher_backbone

    teacher = dino_teacher_backbone(state_dict)
    state_dict = check_state_dict(teacher if teacher is not None else state_dict, what="pretrained weights")
    expected = model.state_dict()
    has_head = [k for k in CLASSIFIER_KEYS if k in state_dict]
    model_head = [k for k in CLASSIFIER_KEYS if k in expected]
    if model_head and not has_head:
        warnings.warn("the pretrained weights have no classifier (a self-supervised backbone?): the model's head "
                      f"{tuple(expected['head.weight'].shape)} keeps its initialisation", stacklevel=2)
        state_dict = {**state_dict, **{k: expected[k] for k in model_head}}
    elif has_head and not model_head:
        state_dict = {k: v for k, v in state_dict.items() if k not in CLASSIFIER_KEYS}
    return remap_state_dict(state_dict, model)


def remap_state_dict(
    state_dict: Dict[str, torch.Tensor], model: nn.Module, what: str = "checkpoint", ignore_shapes=CLASSIFIER_KEYS
) -> Dict[str, torch.Tensor]:
    """The one mapping from any ResMLP checkpoint to this model's keys.

    * official DeiT-repo checkpoints (``patch_embed.``, ``blocks.N.attn``, ``gamma_1``,
      ``norm1.alpha`` of shape ``(dim,)``) go through timm's own
      ``timm.models.mlp_mixer.checkpoint_filter_fn`` (``patch_embed.`` -> ``stem.``,
      ``attn.`` -> ``linear_tokens.``, ``mlp.`` -> ``mlp_channels.``, ``gamma_`` -> ``ls``,
      alpha/beta reshaped to ``(1, 1, dim)``);
    * timm checkpoints (timm's hub files ``resmlp_12_224.fb_in1k``, ``.fb_dino``, ...) already
      have this model's names and shapes.

    Then every key and shape is checked against ``model`` (:func:`check_state_dict_matches`;
    the classifier's shape is left out unless ``ignore_shapes=()``); a checkpoint of another
    architecture raises ``ValueError`` listing the keys that do not fit, naming it ``what``.
    """
    state_dict = timm_resmlp_filter_fn(state_dict, model)
    check_state_dict_matches(state_dict, model, what=what, ignore_shapes=ignore_shapes)
    return state_dict


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,  # ResMLP's evaluation crop ratio (deit README_resmlp.md), timm's default is 0.875
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2105.03404",
        **kwargs,
    }


# name -> (architecture, official LayerScale init).  Params at 224 px / 1000 classes in the paper.
_ARCHS = {
    "resmlp_s12": dict(patch_size=16, embed_dim=384, depth=12, init_values=0.1),  # 15,350,872
    "resmlp_s24": dict(patch_size=16, embed_dim=384, depth=24, init_values=1e-5),  # 30,020,680
    "resmlp_s36": dict(patch_size=16, embed_dim=384, depth=36, init_values=1e-6),  # 44,690,488
    "resmlp_b24": dict(patch_size=16, embed_dim=768, depth=24, init_values=1e-6),  # 115,736,776
    "resmlp_s12_p8": dict(patch_size=8, embed_dim=384, depth=12, init_values=0.1),  # 22,051,624
    "resmlp_b24_p8": dict(patch_size=8, embed_dim=768, depth=24, init_values=1e-6),  # 129,138,280
}
MODEL_NAMES = tuple(_ARCHS)

# Pretrained tags: the released weights (deit README_resmlp.md) as timm's hub files, which hold
# timm's keys and a 1000-class head; they load through checkpoint_filter_fn. The first tag of a
# name is its default (``resmlp_s12`` = ``resmlp_s12.fb_in1k``). No weights exist for B24/16;
# the released "B24" is B24/8 (timm's resmlp_big_24_224). timm's own configs are kept except the
# evaluation crop (0.9, the paper's).
_RELEASED = {
    "resmlp_s12": (
        "resmlp_12_224",
        {"fb_in1k": "resmlp_12_no_dist", "fb_distilled_in1k": "resmlp_12_dist", "fb_dino": "resmlp_12_dino"},
    ),
    "resmlp_s24": (
        "resmlp_24_224",
        {"fb_in1k": "resmlp_24_no_dist", "fb_distilled_in1k": "resmlp_24_dist", "fb_dino": "resmlp_24_dino"},
    ),
    "resmlp_s36": ("resmlp_36_224", {"fb_in1k": "resmlp_36_no_dist", "fb_distilled_in1k": "resmlp_36_dist"}),
    "resmlp_b24_p8": (
        "resmlp_big_24_224",
        {"fb_in1k": "resmlpB_24_no_dist", "fb_distilled_in1k": "resmlpB_24_dist", "fb_in22k_ft_in1k": "resmlpB_24_22k"},
    ),
}


def _tagged_cfgs() -> Dict[str, Dict[str, Any]]:
    cfgs: Dict[str, Dict[str, Any]] = {}
    for name in _ARCHS:
        if name not in _RELEASED:
            cfgs[name] = _cfg()
            continue
        timm_name, tags = _RELEASED[name]
        for tag, fb_file in tags.items():
            cfgs[f"{name}.{tag}"] = _cfg(
                hf_hub_id=f"timm/{timm_name}.{tag}", url=f"https://dl.fbaipublicfiles.com/deit/{fb_file}.pth"
            )
    return cfgs


PRETRAINED_TAGS = {name: tuple(tags) for name, (_, tags) in _RELEASED.items()}
default_cfgs = generate_default_cfgs(_tagged_cfgs())


def _pretrained_file(variant: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """The local weights file timm will read for ``pretrained=True`` (``pretrained_cfg_overlay=
    dict(file=PATH)`` or a ``pretrained_cfg`` with a ``file``), or ``None``."""
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    if cfg.state_dict is not None or cfg.source in ("hf-hub", "local-dir") or cfg.custom_load:
        return None
    return cfg.file or None


def _create_resmlp(variant: str, pretrained: bool = False, **kwargs) -> ResMLP:
    model_args = {**_ARCHS[variant], **kwargs}  # caller's kwargs (patch_size, init_values, ...) win
    file = _pretrained_file(variant, kwargs) if pretrained else None
    if file is not None:
        from .weights import EXPECTED, check_weights_file

        # timm's reader gives bare errors (a text file: KeyError 544502645); name the file instead
        check_weights_file(file)
    try:
        out_indices = model_args.pop("out_indices", 3)  # features_only: the last 3 blocks by default (timm's MlpMixer)
        return build_model_with_cfg(
            ResMLP,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **model_args,
        )
    except ValueError as err:
        if file is None or str(file) in str(err):
            raise
        raise ValueError(f"cannot load pretrained weights {file}: {err}") from err
    except (KeyError, EOFError, RuntimeError, UnicodeDecodeError, pickle.UnpicklingError) as err:
        if file is None:
            raise
        raise ValueError(f"cannot load pretrained weights {file}: {type(err).__name__}: {err}; {EXPECTED}") from err


@register_model
def resmlp_s12(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-S12: patch 16, d=384, 12 blocks, LayerScale init 0.1."""
    return _create_resmlp("resmlp_s12", pretrained, **kwargs)


@register_model
def resmlp_s24(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-S24: patch 16, d=384, 24 blocks, LayerScale init 1e-5."""
    return _create_resmlp("resmlp_s24", pretrained, **kwargs)


@register_model
def resmlp_s36(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-S36: patch 16, d=384, 36 blocks, LayerScale init 1e-6."""
    return _create_resmlp("resmlp_s36", pretrained, **kwargs)


@register_model
def resmlp_b24(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-B24 (/16): patch 16, d=768, 24 blocks, LayerScale init 1e-6 (no weights released)."""
    return _create_resmlp("resmlp_b24", pretrained, **kwargs)


@register_model
def resmlp_s12_p8(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-S12/8: patch 8 (784 patches at 224 px), d=384, 12 blocks, LayerScale init 0.1."""
    return _create_resmlp("resmlp_s12_p8", pretrained, **kwargs)


@register_model
def resmlp_b24_p8(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-B24/8: patch 8, d=768, 24 blocks, LayerScale init 1e-6 (the released "resmlpB_24")."""
    return _create_resmlp("resmlp_b24_p8", pretrained, **kwargs)
