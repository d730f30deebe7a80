"""The training and evaluation loops (deit's ``engine.py``); :mod:`vision.train` holds the CLI
and the wiring, :mod:`vision.dino` DINO's own epoch, built from the pieces here. Every loop takes
the process's :class:`vision.run.RunContext` (device, ranks, AMP, log interval, gradient clip).

* :func:`train_one_epoch`: one supervised epoch, Mixup/CutMix and DeiT distillation aware
  (the criterion is called as ``criterion(images, outputs, labels)``, :class:`vision.losses.DistillationLoss`);
* :func:`evaluate`: top-1 / top-5 accuracy and cross-entropy over a loader, all ranks;
* the pieces both epochs share: :func:`check_finite` (every rank stops together on a
  non-finite loss), :func:`backward` (scaled backward, then unscale and clip), :class:`EpochMeter`
  (progress bar, loss and throughput of an epoch).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from timm.utils import accuracy

from .run import NonFiniteLossError, RunContext, unwrap

# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------


def all_reduce_sum(values: list[float], device: torch.device, distributed: bool) -> list[float]:
    if not distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def check_finite(loss_value: float, ctx: RunContext, where: str) -> None:
    """:class:`vision.run.NonFiniteLossError` (``loss is ... at WHERE``) when the loss of any rank
    is not finite."""
    bad = not math.isfinite(loss_value)
    if ctx.distributed:  # every rank stops together
        bad = bool(all_reduce_sum([float(bad)], ctx.device, True)[0])
    if bad:
        raise NonFiniteLossError(f"loss is {loss_value} at {where}")


def backward(loss: torch.Tensor, optimizer, scaler, clip: Optional[Callable[[], None]] = None) -> None:
    """Zero the gradients and back-propagate the scaled ``loss``; with ``clip``, unscale the
    gradients first and call it. The caller then steps: ``scaler.step(optimizer); scaler.update()``."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(optimizer)
        clip()


class EpochMeter:
    """An epoch's progress bar (primary rank only), mean loss and throughput:
    ``for step, batch in meter: ...; meter.update(step, loss_value, batch_size, lr)``, then
    :meth:`summary` (``loss``, ``img_per_s``, ``minutes``, summed over the ranks)."""

    def __init__(self, loader, desc: str, ctx: RunContext):
        from tqdm import tqdm

        self.ctx = ctx
        self.bar = tqdm(loader, desc=desc, leave=False, disable=not ctx.primary, mininterval=5, dynamic_ncols=True)
        self.loss_sum, self.seen, self.start = 0.0, 0, time.perf_counter()

    def __iter__(self) -> Iterator:
        return enumerate(self.bar)

    def update(self, step: int, loss_value: float, batch_size: int, lr: float) -> None:
        self.loss_sum += loss_value * batch_size
        self.seen += batch_size
        if self.ctx.primary and step % self.ctx.log_interval == 0:
            self.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")

    def summary(self) -> Dict[str, float]:
        elapsed = time.perf_counter() - self.start
        ctx = self.ctx
        loss_total, seen_total = all_reduce_sum([self.loss_sum, float(self.seen)], ctx.device, ctx.distributed)
        return {"loss": loss_total / max(seen_total, 1), "img_per_s": seen_total / elapsed, "minutes": elapsed / 60}


# --------------------------------------------------------------------------------------
# Train / evaluate
# --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: RunContext, *, desc: str = "eval") -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and cross-entropy over the whole loader (all ranks)."""
    from tqdm import tqdm

    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    bar = tqdm(loader, desc=desc, leave=False, disable=not ctx.primary, mininterval=5, dynamic_ncols=True)
    for images, labels in bar:
        images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        acc1, acc5 = accuracy(logits, labels, topk=(1, 5))  # timm's, as DeiT's engine: % of this batch
        n = labels.numel()
        correct1 += round(acc1.item() * n / 100)  # back to the whole count it is (float32 %)
        correct5 += round(acc5.item() * n / 100)
        count += n
    totals = all_reduce_sum([correct1, correct5, loss_sum, count], ctx.device, ctx.distributed)
    correct1, correct5, loss_sum, count = totals
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "count": int(count)}


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader,
    optimizer,
    scheduler,
    ctx: RunContext,
    *,
    epoch: int,
    num_updates: int,
    mixup_fn: Optional[Callable] = None,
    model_ema=None,
) -> tuple[Dict[str, float], int]:
    """One epoch of supervised training: ``model`` (:meth:`RunContext.wrap`-ped: in
    DistributedDataParallel in a distributed run; the EMA follows the module inside) on
    ``loader``'s ``(images (B, 3, H, W), labels (B,))`` batches, Mixup/CutMix by ``mixup_fn``,
    ``criterion(images, outputs, labels)``, ``--clip-grad`` as one norm over all parameters, then
    ``optimizer``, ``scheduler.step_update`` and ``model_ema`` after every update.
    ``num_updates``: the updates before this epoch. Returns ``({"loss", "img_per_s", "minutes"},
    num_updates after it)``."""
    from timm.utils import dispatch_clip_grad

    model.train()
    unwrapped_model = unwrap(model)
    meter = EpochMeter(loader, f"epoch {epoch}", ctx)
    clip = (lambda: dispatch_clip_grad(model.parameters(), ctx.clip_grad)) if ctx.clip_grad else None
    for step, (images, labels) in meter:
        images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        if mixup_fn is not None:
            images, labels = mixup_fn(images, labels)
        with ctx.autocast():
            outputs = model(images)
            loss = criterion(images, outputs, labels)
        loss_value = loss.item()
        check_finite(loss_value, ctx, f"epoch {epoch}, step {step} (update {num_updates})")
        backward(loss, optimizer, ctx.scaler, clip)
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
        num_updates += 1
        if model_ema is not None:
            model_ema.update(unwrapped_model, step=num_updates)
        scheduler.step_update(num_updates=num_updates)
        meter.update(step, loss_value, images.shape[0], optimizer.param_groups[0]["lr"])
    return meter.summary(), num_updates
