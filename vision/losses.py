"""Knowledge distillation loss of DeiT, for a single-head student (ResMLP has no distillation token).

DeiT's ``losses.DistillationLoss`` expects ``(outputs, outputs_kd)`` from a two-head model
and raises otherwise; the released ResMLP distilled checkpoints have one head, so both terms
use the same logits (paper §3, "Distillation"; deit's losses.py):

* ``none``: ``base(y, labels)``
* ``soft``: ``(1 - alpha) base(y, labels) + alpha * tau^2 * KL(softmax(t / tau) || softmax(y / tau))``,
  with DeiT's normalisation (sum over the batch and classes divided by ``y.numel()``);
* ``hard``: ``(1 - alpha) base(y, labels) + alpha * CE(y, argmax t)`` (the paper's choice).

The teacher sees the same (mixed) inputs as the student, as in DeiT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTILLATION_TYPES = ("none", "soft", "hard")


class DistillationLoss(nn.Module):
    """Wraps ``base_criterion`` and adds the teacher term.

    Args:
        base_criterion: loss on the labels (soft-target CE with Mixup, label smoothing otherwise).
        teacher: a model in eval mode (any timm model, or a checkpoint of this CLI), or None for ``none``.
        distillation_type: ``none``, ``soft`` or ``hard``.
        alpha: weight of the teacher term (DeiT default 0.5).
        tau: softmax temperature of the soft term (DeiT default 1.0).

    Shapes: ``inputs (B, 3, H, W)``, ``outputs (B, K)``, ``labels (B,)`` or ``(B, K)``; returns a scalar.
    """

    def __init__(
        self,
        base_criterion: nn.Module,
        teacher: nn.Module | None,
        distillation_type: str = "none",
        alpha: float = 0.5,
        tau: float = 1.0,
    ):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}")
        if distillation_type != "none" and teacher is None:
            raise ValueError(f"{distillation_type} distillation needs a teacher model")
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        base_loss = self.base_criterion(outputs, labels)
        if self.distillation_type == "none":
            return base_loss
        with torch.no_grad():
            teacher_outputs = self.teacher(inputs)
        if self.distillation_type == "soft":
            tau = self.tau
            distillation_loss = (
                F.kl_div(
                    F.log_softmax(outputs / tau, dim=1),
                    F.log_softmax(teacher_outputs / tau, dim=1),
                    reduction="sum",
                    log_target=True,
                )
                * (tau * tau)
                / outputs.numel()
            )
        else:
            distillation_loss = F.cross_entropy(outputs, teacher_outputs.argmax(dim=1))
        return base_loss * (1 - self.alpha) + distillation_loss * self.alpha
