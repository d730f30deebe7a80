"""Self-supervised ResMLP with DINO (Caron et al. 2021), as in the ResMLP paper's §3.2 / Table 2.

    python -m vision.dino --config dino_imagenet_s12 --data-dir /data/imagenet --output runs/dino_s12
    torchrun --nproc_per_node 8 -m vision.dino --config dino_imagenet_s12 --data-dir ... --output ...
    python -m vision.dino --config dino_cifar10_cpu --data-dir ../shared/data/cifar10 --output runs/dino_c10

Every DINO piece is written once, here, after DINO's reference code (facebookresearch/dino,
``main_dino.py``, ``utils.py``, ``vision_transformer.py``):

* :class:`MultiCropAugmentation` (``DataAugmentationDINO``): 2 global crops (RandomResizedCrop,
  scale ``(0.4, 1)``), ``N`` local crops (scale ``(0.05, 0.4)``), flip, colour jitter, grey,
  Gaussian blur, solarisation;
* :class:`DINOHead`: 3-layer MLP (hidden 2048, GELU), bottleneck 256, l2-normalised, then a
  weight-normalised linear layer to ``out_dim`` (its norm fixed at 1 with ``norm_last_layer``);
* :class:`MultiCropWrapper`: backbone once per run of crops of equal size, then the head;
* :class:`DINOLoss`: cross-entropy between the sharpened, centred teacher distribution of each
  global crop and the student distribution of every other crop; centre EMA (momentum 0.9);
  teacher temperature warmed up linearly over epochs (0.04 -> 0.07), student temperature 0.1;
* :func:`cosine_schedule` (``utils.cosine_scheduler``): per-iteration lr (linear warm-up from 0,
  then cosine to ``min_lr``), weight decay (0.04 -> 0.4) and teacher momentum (0.996 -> 1), held
  with the epochs of the frozen last layer in :class:`DINOSchedule`;
* :func:`update_teacher` (EMA of the student's parameters), :func:`clip_gradients_per_parameter`
  (``utils.clip_gradients``: each parameter's gradient norm clipped to 3.0 on its own),
  :func:`cancel_last_layer_gradients` (the last layer frozen in the first epoch),
  :func:`param_groups` (no weight decay on biases and 1-D parameters, and on what the model's
  ``no_weight_decay()`` names: ResMLP's Affine and LayerScale vectors).

**ResMLP and local crops.** The cross-patch matrix fixes the number of patches, so a ResMLP
reads every crop at its own input size: local crops are cut at DINO's small scales but resized
to ``--img-size`` (``--local-crop-size`` must then equal ``--img-size``; a model with a flexible
input size, e.g. a timm ViT, can take smaller local crops). This is not stated in the paper.

The backbone is any timm model built with ``num_classes=0`` (a ResMLP from :mod:`vision.resmlp`
by default), created from the project's registry and datasets (:mod:`vision.data`).

Output folder: ``last.pth`` (atomic, every epoch; ``--resume auto`` continues exactly: student,
teacher, DINO centre, optimizer, schedules, sampler epoch, random generators), ``summary.csv``,
``log.txt``, ``args.yaml``. The teacher's backbone is the model to evaluate (DINO's convention):
``vision.knn``, ``vision.linear``, ``vision.plot``, ``vision.evaluate`` and ``vision.train
--initial-checkpoint`` read it from ``last.pth`` (``checkpoint.state_dict_of``).
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from PIL import Image, ImageFilter
from timm.utils import ParseKwargs, random_seed
from torch import nn

from . import checkpoint as ckpt_io
from .data import ImageFolderDataset, build_train_sampler
from .engine import EpochMeter, backward, check_finite
from .resmlp import MODEL_NAMES
from .run import RunContext, add_device_args, launch, parse_run_args, unwrap, with_model_kwargs

_logger = logging.getLogger("vision.dino")


# --------------------------------------------------------------------------------------
# Augmentation (DINO's DataAugmentationDINO)
# --------------------------------------------------------------------------------------


class GaussianBlur:
    """With probability ``p``, blur with a radius drawn uniformly in ``[radius_min, radius_max]``
    (PIL; DINO's ``utils.GaussianBlur``)."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"GaussianBlur(p={self.prob}, radius=({self.radius_min}, {self.radius_max}))"


class MultiCropAugmentation:
    """DINO's multi-crop: ``image -> [global_1, global_2, local_1, ..., local_N]``, tensors
    ``(3, global_size, global_size)`` then ``(3, local_size, local_size)``.

    As ``DataAugmentationDINO``: RandomResizedCrop (bicubic) at ``global_scale`` /
    ``local_scale``; flip; colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8; greyscale p=0.2; then
    Gaussian blur with probability ``blur_probs = (global_1, global_2, local)`` (DINO: 1.0, 0.1,
    0.5), solarisation of the second global crop (p=0.2); normalise.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        local_crops_number: int = 8,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        blur_probs: Sequence[float] = (1.0, 0.1, 0.5),
        blur_radius: Sequence[float] = (0.1, 2.0),
        solarization_prob: float = 0.2,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        interpolation: str = "bicubic",
    ):
        from torchvision import transforms as T

        if local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {local_crops_number}")
        for name, scale in (("global_scale", global_scale), ("local_scale", local_scale)):
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise ValueError(f"{name} must be two numbers 0 < min <= max <= 1, got {tuple(scale)}")
        self.local_crops_number = local_crops_number
        interp = _interpolation_mode(interpolation)
        flip_and_color_jitter = T.Compose(
            [
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
            ]
        )
        normalize = T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])
        r0, r1 = blur_radius
        self.global_transfo1 = T.Compose(
            [T.RandomResizedCrop(global_size, scale=tuple(global_scale), interpolation=interp), flip_and_color_jitter,
             GaussianBlur(blur_probs[0], r0, r1), normalize]
        )
        self.global_transfo2 = T.Compose(
            [T.RandomResizedCrop(global_size, scale=tuple(global_scale), interpolation=interp), flip_and_color_jitter,
             GaussianBlur(blur_probs[1], r0, r1), T.RandomSolarize(threshold=128, p=solarization_prob), normalize]
        )
        self.local_transfo = T.Compose(
            [T.RandomResizedCrop(local_size, scale=tuple(local_scale), interpolation=interp), flip_and_color_jitter,
             GaussianBlur(blur_probs[2], r0, r1), normalize]
        )

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops += [self.local_transfo(image) for _ in range(self.local_crops_number)]
        return crops


def _interpolation_mode(name: str):
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(name)
    except ValueError as err:
        raise ValueError(f"unknown interpolation {name!r} (bicubic, bilinear, nearest, ...)") from err


# --------------------------------------------------------------------------------------
# Head, multi-crop wrapper, loss (DINO's vision_transformer.DINOHead, utils.MultiCropWrapper,
# main_dino.DINOLoss)
# --------------------------------------------------------------------------------------


class DINOHead(nn.Module):
    """Projection head: ``Linear(in, hidden) GELU Linear(hidden, hidden) GELU Linear(hidden,
    bottleneck)`` (``nlayers=3``), l2-normalise, then a weight-normalised ``Linear(bottleneck,
    out_dim, bias=False)`` whose norm ``g`` starts at 1 and, with ``norm_last_layer``, stays 1.

    Shapes: ``(B, in_dim) -> (B, out_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0  # (out_dim, 1): the norm of each output row
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad_(False)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            from timm.layers import trunc_normal_

            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """``backbone`` then ``head`` on a list of crop batches: consecutive crops of the same size
    are concatenated and go through the backbone together (DINO's ``utils.MultiCropWrapper``).

    Shapes: ``[(B, 3, H_i, W_i)] * n_crops -> (n_crops * B, out_dim)``, crop-major (the rows of
    crop 0 first), so ``output.chunk(n_crops)`` gives one block per crop.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        sizes = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0).tolist()
        start, features = 0, []
        for end in ends:
            features.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return self.head(torch.cat(features))


class DINOLoss(nn.Module):
    """DINO's loss with centering and sharpening.

    ``forward(student_output, teacher_output, epoch)``: ``student_output`` is
    ``(n_crops * B, K)`` and ``teacher_output`` ``(2 * B, K)`` (crop-major, see
    :class:`MultiCropWrapper`). With ``P_t = softmax((t - center) / T_t(epoch))`` per global crop
    and ``log P_s = log_softmax(s / T_s)`` per crop, the loss is the mean over the pairs
    ``(global crop i, crop v != i)`` of ``mean_b sum_k -P_t[i] log P_s[v]``. Then the centre is
    moved towards the batch mean of the teacher outputs (over all processes):
    ``center = m * center + (1 - m) * mean(teacher_output)``, ``m = center_momentum``.

    The teacher temperature is ``linspace(warmup_teacher_temp, teacher_temp,
    warmup_teacher_temp_epochs)`` for the first epochs, then ``teacher_temp``.

    Collapse monitors (no gradient), in nats, of the last call: ``last_teacher_entropy``, the mean
    over rows of ``H(P_t)``, and ``last_teacher_batch_entropy``, ``H(mean_b P_t)``. Both near
    ``ln K``: a uniform teacher (collapse to uniform, the loss then sits near ``ln K`` too); both
    near 0: every image on the same dimension; healthy: the first low, the second high.
    """

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        nepochs: int = 300,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        if ncrops < 2:
            raise ValueError(f"DINO needs at least the 2 global crops, got ncrops={ncrops}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.last_teacher_entropy = torch.zeros(())
        self.last_teacher_batch_entropy = torch.zeros(())
        warmup = min(int(warmup_teacher_temp_epochs), nepochs)
        self.teacher_temp_schedule = np.concatenate(
            (np.linspace(warmup_teacher_temp, teacher_temp, warmup), np.ones(nepochs - warmup) * teacher_temp)
        )

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temp_schedule[min(epoch, len(self.teacher_temp_schedule) - 1)])

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = self.teacher_temp(epoch)
        teacher_probs = F.softmax((teacher_output - self.center) / temp, dim=-1).detach()
        self.last_teacher_entropy, self.last_teacher_batch_entropy = teacher_entropies(teacher_probs)
        teacher_out = teacher_probs.chunk(2)
        total_loss, n_loss_terms = 0.0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue  # the same view for teacher and student
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss = total_loss + loss.mean()
                n_loss_terms += 1
        total_loss = total_loss / n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """``center = m * center + (1 - m) * batch mean``, the mean over every process's rows."""
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        count = len(teacher_output)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            count *= dist.get_world_size()
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype), alpha=1 - self.center_momentum)


@torch.no_grad()
def teacher_entropies(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean_b H(probs[b]), H(mean_b probs[b]))`` in nats for ``probs (B, K)`` (rows sum to 1);
    0-d tensors on ``probs``' device (no synchronisation)."""
    probs = probs.float()
    per_row = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
    mean = probs.mean(dim=0)
    return per_row, -(mean * mean.clamp_min(1e-12).log()).sum()


# --------------------------------------------------------------------------------------
# Schedules, teacher update, gradient handling, parameter groups (DINO's utils)
# --------------------------------------------------------------------------------------


def cosine_schedule(
    base_value: float, final_value: float, epochs: int, niter_per_ep: int, warmup_epochs: float = 0,
    start_warmup_value: float = 0.0
) -> np.ndarray:
    """Per-iteration values (``epochs * niter_per_ep``): a linear warm-up from
    ``start_warmup_value`` to ``base_value`` over ``warmup_epochs * niter_per_ep`` iterations,
    then ``final + (base - final) * (1 + cos(pi * i / n)) / 2`` over the ``n`` others (DINO's
    ``utils.cosine_scheduler``; fractional warm-up epochs allowed)."""
    warmup_iters = int(round(warmup_epochs * niter_per_ep))
    total = epochs * niter_per_ep
    if warmup_iters > total:
        raise ValueError(f"warm-up of {warmup_epochs} epochs is longer than the {epochs} epochs of the run")
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(total - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, schedule))
    assert len(schedule) == total
    return schedule


@dataclass(frozen=True)
class DINOSchedule:
    """What DINO changes along the run: per-iteration values (``epochs * iterations per epoch``,
    :func:`cosine_schedule`) of the learning rate, the weight decay of the regularised parameter
    group and the teacher's EMA momentum; and ``freeze_last_layer``, the first epochs in which
    the head's last layer is not trained."""

    lr: np.ndarray
    weight_decay: np.ndarray
    teacher_momentum: np.ndarray
    freeze_last_layer: int


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """EMA of the parameters: ``teacher = momentum * teacher + (1 - momentum) * student``
    (parameters in the same order; buffers are not averaged, as DINO)."""
    params_s, params_t = list(student.parameters()), list(teacher.parameters())
    if len(params_s) != len(params_t):
        raise ValueError(f"student and teacher differ: {len(params_s)} vs {len(params_t)} parameters")
    torch._foreach_mul_(params_t, momentum)
    torch._foreach_add_(params_t, [p.detach() for p in params_s], alpha=1 - momentum)


def clip_gradients_per_parameter(model: nn.Module, clip: float) -> list[float]:
    """DINO's ``utils.clip_gradients``: every parameter's gradient is scaled to norm ``clip`` if
    its norm is larger (each parameter on its own, not one global norm). Returns the norms."""
    norms = []
    for p in model.parameters():
        if p.grad is None:
            continue
        param_norm = p.grad.detach().norm(2)
        norms.append(param_norm.item())
        clip_coef = clip / (param_norm + 1e-6)
        if clip_coef < 1:
            p.grad.mul_(clip_coef)
    return norms


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """Drop the gradients of the head's last layer during the first ``freeze_last_layer`` epochs
    (DINO: training is unstable otherwise)."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


def param_groups(model: nn.Module) -> list[Dict[str, Any]]:
    """``[{"params": decayed}, {"params": not decayed, "weight_decay": 0.0}]``: no weight decay on
    biases, 1-D parameters (DINO's ``utils.get_params_groups``) and the parameters named by the
    backbone's ``no_weight_decay()`` patterns (ResMLP: Affine ``alpha``/``beta`` shaped
    ``(1, 1, dim)``, LayerScale)."""
    patterns: set[str] = set()
    for prefix, module in model.named_modules():
        nwd = getattr(module, "no_weight_decay", None)
        if callable(nwd):
            patterns |= {f"{prefix}.{p}" if prefix else p for p in nwd()}
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        bare = name.replace("module.", "")
        if name.endswith(".bias") or p.ndim <= 1 or any(fnmatch.fnmatch(bare, pat) for pat in patterns):
            not_regularized.append(p)
        else:
            regularized.append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vision.dino",
        description="Self-supervised training of a ResMLP (or any timm backbone) with DINO.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", "-c", default=None,
                   help="YAML file, or a name in vision/configs (its keys are these options)")
    g = p.add_argument_group("data (labels are not used)")
    g.add_argument("--data-dir", default=None, help="ImageFolder root (its --train-split is used)")
    g.add_argument("--train-split", default="train")
    g.add_argument("--dataset-cache", default="none", choices=["none", "memory"],
                   help="memory: decode every image once (small datasets)")
    g.add_argument("--bad-images", default="error", choices=["error", "skip"])
    g.add_argument("--max-per-class", type=int, default=None, help="use the first K images of each class folder")
    g.add_argument("--workers", "-j", type=int, default=10, help="data loader processes per training process")
    g.add_argument("--pin-mem", action=argparse.BooleanOptionalAction, default=True)
    g = p.add_argument_group("multi-crop")
    g.add_argument("--img-size", type=int, default=224, help="global crop size = the backbone's input size")
    g.add_argument("--global-crops-scale", type=float, nargs=2, default=(0.4, 1.0))
    g.add_argument("--local-crops-number", type=int, default=8)
    g.add_argument("--local-crops-scale", type=float, nargs=2, default=(0.05, 0.4))
    g.add_argument("--local-crop-size", type=int, default=None,
                   help="default: --img-size (a ResMLP reads one input size)")
    g.add_argument("--blur-probs", type=float, nargs=3, default=(1.0, 0.1, 0.5),
                   help="Gaussian blur probability: global 1, global 2, local")
    g.add_argument("--blur-radius", type=float, nargs=2, default=(0.1, 2.0))
    g.add_argument("--solarization-prob", type=float, default=0.2, help="for the second global crop")
    g.add_argument("--interpolation", default="bicubic")
    g.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    g.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    g.add_argument("--eval-crop-pct", type=float, default=None,
                   help="crop ratio stored for evaluating the checkpoint (vision.knn/linear); default 0.875 "
                        "(DINO's eval_knn: resize 256, crop 224), 1.0 for images of 64 px or less")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resmlp_s12", help="timm backbone name (ResMLP: " + ", ".join(MODEL_NAMES) + ")")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs,
                   help="extra create_model arguments, key=value")
    g.add_argument("--drop-path", type=float, default=0.1,
                   help="stochastic depth of the student (the teacher has none)")
    g.add_argument("--out-dim", type=int, default=65536, help="DINO head output dimension")
    g.add_argument("--head-hidden-dim", type=int, default=2048)
    g.add_argument("--head-bottleneck-dim", type=int, default=256)
    g.add_argument("--head-layers", type=int, default=3)
    g.add_argument("--norm-last-layer", action=argparse.BooleanOptionalAction, default=True,
                   help="fix the last layer's weight norm at 1")
    g = p.add_argument_group("DINO")
    g.add_argument("--momentum-teacher", type=float, default=0.996,
                   help="teacher EMA momentum, raised to 1 by a cosine")
    g.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    g.add_argument("--teacher-temp", type=float, default=0.07)
    g.add_argument("--warmup-teacher-temp-epochs", type=int, default=30)
    g.add_argument("--student-temp", type=float, default=0.1)
    g.add_argument("--center-momentum", type=float, default=0.9)
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--lr", type=float, default=5e-4,
                   help="peak lr for a global batch of --lr-base-size (scaled linearly, as DINO)")
    g.add_argument("--lr-base-size", type=int, default=256)
    g.add_argument("--min-lr", type=float, default=1e-6)
    g.add_argument("--warmup-epochs", type=float, default=10)
    g.add_argument("--weight-decay", type=float, default=0.04)
    g.add_argument("--weight-decay-end", type=float, default=0.4)
    g.add_argument("--clip-grad", type=float, default=3.0, help="per-parameter gradient norm clip (0: off)")
    g.add_argument("--freeze-last-layer", type=int, default=1, help="epochs with the head's last layer frozen")
    g.add_argument("--epochs", type=int, default=100)
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", "-b", type=int, default=64, help="per process")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output", default=None, help="output folder (checkpoints, logs)")
    g.add_argument("--resume", default=None,
                   help="a vision.dino checkpoint to continue from, or 'auto' (OUTPUT/last.pth if present)")
    g.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop after this epoch (0-based) although the schedule spans --epochs")
    g.add_argument("--max-train-minutes", type=float, default=None,
                   help="stop at the end of an epoch when the next one would pass this training time "
                        "(the schedule still spans --epochs)")
    add_device_args(g)
    return p


# Flags that say where and how a run executes, not what it trains: they may change between a run
# and its resume (another machine, more threads, a time limit). Every other flag is the recipe.
RUN_FLAGS = frozenset({
    "config", "data_dir", "output", "resume", "stop_after_epoch", "max_train_minutes", "workers", "pin_mem",
    "dataset_cache", "bad_images", "device", "amp", "amp_dtype", "threads", "log_interval",
})


def recipe_changes(saved_args: Dict[str, Any], args: argparse.Namespace) -> list[str]:
    """``--flag: saved -> now`` for every recipe flag (not in :data:`RUN_FLAGS`) whose value in
    ``args`` differs from ``saved_args`` (a checkpoint's ``args``). Flags the checkpoint does not
    record (added after it was written) are not compared."""
    now = ckpt_io.args_dict(args)
    changes = []
    for key in sorted(now):
        if key in RUN_FLAGS or key not in saved_args:
            continue
        if saved_args[key] != now[key]:
            changes.append(f"--{key.replace('_', '-')}: {saved_args[key]!r} -> {now[key]!r}")
    return changes


def backbone_kwargs(args: argparse.Namespace, drop_path: float) -> Dict[str, Any]:
    """``timm.create_model`` arguments of the backbone (no classifier)."""
    return with_model_kwargs(args, num_classes=0, drop_path_rate=drop_path)


def build_student_teacher(args: argparse.Namespace) -> tuple[MultiCropWrapper, MultiCropWrapper, Dict[str, Any]]:
    """Student (drop path ``--drop-path``) and teacher (no drop path, the student's weights, no
    gradients), each a backbone + :class:`DINOHead`. Returns ``(student, teacher, teacher
    backbone kwargs)``."""
    import timm

    student_backbone = timm.create_model(args.model, **backbone_kwargs(args, args.drop_path))
    teacher_kwargs = backbone_kwargs(args, 0.0)
    teacher_backbone = timm.create_model(args.model, **teacher_kwargs)
    embed_dim = student_backbone.num_features
    head_kwargs = dict(out_dim=args.out_dim, hidden_dim=args.head_hidden_dim, bottleneck_dim=args.head_bottleneck_dim,
                       nlayers=args.head_layers)
    student = MultiCropWrapper(student_backbone,
                               DINOHead(embed_dim, norm_last_layer=args.norm_last_layer, **head_kwargs))
    teacher = MultiCropWrapper(teacher_backbone, DINOHead(embed_dim, **head_kwargs))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher, teacher_kwargs


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parse_run_args(parser, argv)
    local_size = args.local_crop_size or args.img_size
    if args.model in MODEL_NAMES and local_size != args.img_size:
        parser.error(f"--local-crop-size {local_size}: a ResMLP reads one input size "
                     f"(its cross-patch matrix is fixed), so local crops are resized to --img-size {args.img_size}; "
                     "leave --local-crop-size out")
    if args.batch_size < 1 or args.epochs < 1:
        parser.error("--batch-size and --epochs must be positive")
    return launch(args, _run, _logger)


def _run(args: argparse.Namespace, ctx: RunContext, output: Path) -> int:
    random_seed(args.seed, ctx.rank)

    # ---- data
    train_root = Path(args.data_dir) / args.train_split
    augment = MultiCropAugmentation(
        global_size=args.img_size,
        local_size=args.local_crop_size or args.img_size,
        local_crops_number=args.local_crops_number,
        global_scale=args.global_crops_scale,
        local_scale=args.local_crops_scale,
        blur_probs=args.blur_probs,
        blur_radius=args.blur_radius,
        solarization_prob=args.solarization_prob,
        mean=args.mean,
        std=args.std,
        interpolation=args.interpolation,
    )
    dataset = ImageFolderDataset(train_root, augment, cache=args.dataset_cache, bad_images=args.bad_images,
                                 max_per_class=args.max_per_class, cache_threads=min(8, os.cpu_count() or 1))
    sampler = build_train_sampler(dataset, 0, ctx.rank, ctx.world_size, args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True, num_workers=args.workers,
        pin_memory=args.pin_mem and ctx.device.type == "cuda",
    )
    if len(loader) == 0:
        raise ValueError(f"{len(sampler)} images per process ({train_root}) is less than one batch of "
                         f"{args.batch_size}")
    ncrops = 2 + args.local_crops_number
    _logger.info(f"data: {len(dataset)} images ({train_root}, labels unused), {ncrops} crops each (2 global + "
                 f"{args.local_crops_number} local at {args.local_crop_size or args.img_size} px); "
                 f"{ctx.world_size} process(es) on {ctx.device}, {len(loader)} steps per epoch")

    # ---- models, loss, optimizer, schedules
    student, teacher, teacher_kwargs = build_student_teacher(args)
    student.to(ctx.device)
    teacher.to(ctx.device)
    n_backbone = sum(p.numel() for p in student.backbone.parameters())
    n_head = sum(p.numel() for p in student.head.parameters())
    _logger.info(f"model: {args.model} {teacher_kwargs}, backbone {n_backbone:,} parameters, DINO head {n_head:,} "
                 f"(out_dim {args.out_dim}, norm_last_layer {args.norm_last_layer})")
    dino_loss = DINOLoss(args.out_dim, ncrops, args.warmup_teacher_temp, args.teacher_temp,
                         args.warmup_teacher_temp_epochs, args.epochs, args.student_temp,
                         args.center_momentum).to(ctx.device)
    optimizer = torch.optim.AdamW(param_groups(student))  # lr and wd are set every step from the schedules
    global_batch = args.batch_size * ctx.world_size
    lr = args.lr * global_batch / args.lr_base_size
    niter = len(loader)
    schedule = DINOSchedule(
        lr=cosine_schedule(lr, args.min_lr, args.epochs, niter, warmup_epochs=args.warmup_epochs),
        weight_decay=cosine_schedule(args.weight_decay, args.weight_decay_end, args.epochs, niter),
        teacher_momentum=cosine_schedule(args.momentum_teacher, 1.0, args.epochs, niter),
        freeze_last_layer=args.freeze_last_layer,
    )
    _logger.info(f"optimizer: AdamW, peak lr {lr:.3g} (global batch {global_batch}), weight decay "
                 f"{args.weight_decay} -> {args.weight_decay_end}, teacher momentum {args.momentum_teacher} -> 1, "
                 f"teacher temperature {args.warmup_teacher_temp} -> {args.teacher_temp} over "
                 f"{args.warmup_teacher_temp_epochs} epochs")

    # ---- resume
    start_epoch, history, resume_rng = 0, [], None
    if ctx.primary:
        ckpt_io.prepare_output(output, _logger)
    resume_path = ckpt_io.latest(output) if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    if resume_path is not None:
        state = ckpt_io.load(resume_path)
        if state.get("format") != ckpt_io.DINO_FORMAT:
            raise ValueError(f"--resume {resume_path}: not a vision.dino checkpoint (format {state.get('format')!r})")
        if state["model_name"] != args.model or state["model_kwargs"] != teacher_kwargs:
            raise ValueError(f"--resume {resume_path}: the checkpoint is of {state['model_name']} "
                             f"{state['model_kwargs']}, this run trains {args.model} {teacher_kwargs}")
        changes = recipe_changes(state.get("args") or {}, args)
        if changes:
            raise ValueError(f"--resume {resume_path}: the checkpoint was trained with another recipe "
                             f"({'; '.join(changes)}). A resumed run continues its own recipe: "
                             "resume with the checkpoint's flags, or start a new --output")
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        dino_loss.load_state_dict(state["dino_loss"])
        optimizer.load_state_dict(state["optimizer"])
        ctx.scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"] + 1
        history = list(state.get("summary") or [])
        resume_rng = state["rng"]
        _logger.info(f"resumed from {resume_path}: epoch {state['epoch']} done")
        del state
    train_student = ctx.wrap(student)
    if ctx.primary:
        with open(output / "args.yaml", "w") as fh:
            yaml.safe_dump({**vars(args), "effective_lr": lr, "world_size": ctx.world_size}, fh, sort_keys=False)
        ckpt_io.trim_summary_atomic(output / "summary.csv", start_epoch)
    if resume_rng is not None:
        ckpt_io.restore_rng_state(resume_rng, ctx.rank, ctx.world_size, _logger)

    last_epoch = args.epochs - 1 if args.stop_after_epoch is None else min(args.epochs - 1, args.stop_after_epoch)
    train_minutes = sum(row["train"]["minutes"] for row in history)
    for epoch in range(start_epoch, last_epoch + 1):
        if args.max_train_minutes is not None and history:
            per_epoch = history[-1]["train"]["minutes"]
            if train_minutes + per_epoch > args.max_train_minutes:
                _logger.info(f"stopping before epoch {epoch}: {train_minutes:.1f} training minutes so far, "
                             f"another epoch (~{per_epoch:.1f}) would pass --max-train-minutes "
                             f"{args.max_train_minutes}")
                break
        sampler.set_epoch(epoch)
        metrics = train_one_epoch(train_student, teacher, dino_loss, loader, optimizer, ctx,
                                  epoch=epoch, schedule=schedule)
        train_minutes += metrics["minutes"]
        _logger.info(
            f"epoch {epoch}: DINO loss {metrics['loss']:.4f}, {metrics['img_per_s']:.1f} img/s, "
            f"{metrics['minutes']:.2f} min; lr {metrics['lr']:.3g}, wd {metrics['wd']:.3g}, teacher momentum "
            f"{metrics['momentum']:.5f}, teacher temp {metrics['teacher_temp']:.3f}, centre norm "
            f"{dino_loss.center.norm().item():.3f}; teacher entropy per image {metrics['teacher_entropy']:.3f}, "
            f"of the batch mean {metrics['teacher_batch_entropy']:.3f} (ln K = {math.log(args.out_dim):.3f})"
        )
        rng = ckpt_io.gather_rng_state(ctx.world_size, ctx.distributed)
        if ctx.primary:
            row = {"epoch": epoch, "train": dict(metrics), "eval": {}, "lr": metrics["lr"]}
            history = [*history, row]
            state = {
                "format": ckpt_io.DINO_FORMAT,
                "model_name": args.model,
                "model_kwargs": teacher_kwargs,
                "data_config": ckpt_io.data_config(args.img_size,
                                                   args.eval_crop_pct or (1.0 if args.img_size <= 64 else 0.875),
                                                   args.interpolation, args.mean, args.std),
                "student": student.state_dict(),
                "teacher": teacher.state_dict(),
                "dino_loss": dino_loss.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": ctx.scaler.state_dict(),
                "epoch": epoch,
                "num_updates": (epoch + 1) * niter,
                "rng": rng,
                "args": ckpt_io.args_dict(args),
                "summary": history,
            }
            ckpt_io.write_epoch(output, state, row)  # summary.csv row, then last.pth
        if ctx.distributed:
            dist.barrier()
    if ctx.primary:
        _logger.info(f"done: {train_minutes:.1f} training minutes; the teacher backbone of {output / 'last.pth'} "
                     f"is the model to evaluate (python -m vision.knn --checkpoint {output / 'last.pth'} ...)")
    return 0


def train_one_epoch(student: nn.Module, teacher: nn.Module, dino_loss: DINOLoss, loader, optimizer, ctx: RunContext, *,
                    epoch: int, schedule: DINOSchedule) -> Dict[str, float]:
    """One epoch of DINO (``main_dino.train_one_epoch``): ``student`` (:meth:`RunContext.wrap`-ped)
    on every crop of ``loader``'s ``([crops (B, 3, H_i, W_i)], labels)`` batches, ``teacher`` on the
    2 global crops; lr, weight decay and teacher momentum set per iteration from ``schedule``,
    ``--clip-grad`` per parameter, the last layer frozen in the first epochs, EMA update of the
    teacher. Returns the epoch's loss, throughput, last schedule values and collapse monitors."""
    train_student, student = student, unwrap(student)  # the forward / the parameters (no "module." prefix)
    train_student.train()
    niter = len(loader)
    meter = EpochMeter(loader, f"DINO epoch {epoch}", ctx)
    clip = (lambda: clip_gradients_per_parameter(student, ctx.clip_grad)) if ctx.clip_grad else None
    entropy_sum = torch.zeros(2, device=ctx.device)  # the collapse monitors of DINOLoss, summed over steps
    for step, (crops, _labels) in meter:
        it = niter * epoch + step  # global iteration
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(schedule.lr[it])
            if i == 0:  # only the regularized parameters
                group["weight_decay"] = float(schedule.weight_decay[it])
        crops = [c.to(ctx.device, non_blocking=True) for c in crops]
        with ctx.autocast():
            teacher_output = teacher(crops[:2])  # only the 2 global crops go through the teacher
            student_output = train_student(crops)
            loss = dino_loss(student_output.float(), teacher_output.float(), epoch)
        loss_value = loss.item()
        check_finite(loss_value, ctx, f"epoch {epoch}, step {step}")
        backward(loss, optimizer, ctx.scaler, clip)
        cancel_last_layer_gradients(student, epoch, schedule.freeze_last_layer)
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
        update_teacher(student, teacher, float(schedule.teacher_momentum[it]))
        entropy_sum += torch.stack([dino_loss.last_teacher_entropy, dino_loss.last_teacher_batch_entropy])
        meter.update(step, loss_value, crops[0].shape[0], schedule.lr[it])
    last_it = niter * epoch + niter - 1
    if ctx.distributed:
        dist.all_reduce(entropy_sum)
        entropy_sum /= dist.get_world_size()
    entropy = (entropy_sum / max(niter, 1)).tolist()
    return {
        **meter.summary(),
        "teacher_entropy": entropy[0],
        "teacher_batch_entropy": entropy[1],
        "lr": float(schedule.lr[last_it]),
        "wd": float(schedule.weight_decay[last_it]),
        "momentum": float(schedule.teacher_momentum[last_it]),
        "teacher_temp": dino_loss.teacher_temp(epoch),
    }


if __name__ == "__main__":
    sys.exit(main())
