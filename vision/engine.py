"""The training and evaluation loops (deit's ``engine.py``); :mod:`vision.train` holds the CLI
and the wiring, :mod:`vision.dino` DINO's own epoch, built from the pieces here.

* :func:`train_one_epoch`: one supervised epoch, Mixup/CutMix and DeiT distillation aware
  (the criterion is called as ``criterion(images, outputs, labels)``, :class:`vision.losses.DistillationLoss`);
* :func:`evaluate`: top-1 / top-5 accuracy and cross-entropy over a loader, all ranks;
* the pieces both epochs share: :func:`autocast_context` and :func:`grad_scaler` (AMP),
  :func:`check_finite` (every rank stops together on a non-finite loss), :func:`backward`
  (scaled backward, then unscale and clip), :class:`EpochMeter` (progress bar, loss and
  throughput of an epoch), :func:`run_guarded` (a run's exit status for a non-finite loss or
  bad input).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from .data import BadImageError, error_line

#: The exit status of a run stopped by a non-finite loss.
EXIT_NONFINITE_LOSS = 3


class NonFiniteLossError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------


def autocast_context(args: argparse.Namespace, device: torch.device):
    """A factory of the forward's autocast context: ``--amp`` on CUDA (``--amp-dtype``), else none."""
    if args.amp and device.type == "cuda":
        dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


def grad_scaler(args: argparse.Namespace, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler: on only for float16 autocast on CUDA (a no-op otherwise)."""
    return torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda" and args.amp_dtype == "float16")


def all_reduce_sum(values: list[float], device: torch.device, distributed: bool) -> list[float]:
    if not distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def check_finite(loss_value: float, device: torch.device, distributed: bool, where: str) -> None:
    """:class:`NonFiniteLossError` (``loss is ... at WHERE``) when the loss of any rank is not finite."""
    bad = not math.isfinite(loss_value)
    if distributed:  # every rank stops together
        bad = bool(all_reduce_sum([float(bad)], device, True)[0])
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

    def __init__(self, loader, desc: str, device: torch.device, distributed: bool, primary: bool, log_interval: int):
        from tqdm import tqdm

        self.device, self.distributed, self.primary, self.log_interval = device, distributed, primary, log_interval
        self.bar = tqdm(loader, desc=desc, leave=False, disable=not primary, mininterval=5, dynamic_ncols=True)
        self.loss_sum, self.seen, self.start = 0.0, 0, time.perf_counter()

    def __iter__(self) -> Iterator:
        return enumerate(self.bar)

    def update(self, step: int, loss_value: float, batch_size: int, lr: float) -> None:
        self.loss_sum += loss_value * batch_size
        self.seen += batch_size
        if self.primary and step % self.log_interval == 0:
            self.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")

    def summary(self) -> Dict[str, float]:
        elapsed = time.perf_counter() - self.start
        loss_total, seen_total = all_reduce_sum([self.loss_sum, float(self.seen)], self.device, self.distributed)
        return {"loss": loss_total / max(seen_total, 1), "img_per_s": seen_total / elapsed, "minutes": elapsed / 60}


def run_guarded(run: Callable[[], int], output: Path, primary: bool, distributed: bool, logger: logging.Logger) -> int:
    """``run()``'s exit status; a non-finite loss gives :data:`EXIT_NONFINITE_LOSS` (the last
    checkpoint is left as it was), bad input (data, checkpoint, option) 2 with a one-line
    message (the traceback goes to ``log.txt``). Ends the process group of a distributed run."""
    try:
        return run()
    except NonFiniteLossError as err:
        last = output / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written before it"
        logger.error(f"stopping: {err}; {kept} (left unchanged). Lower the learning rate or check the data.")
        return EXIT_NONFINITE_LOSS
    except (BadImageError, ValueError, FileNotFoundError) as err:
        logger.error(f"error: {error_line(err)}")
        if primary:
            with open(output / "log.txt", "a") as fh:
                traceback.print_exc(file=fh)
        return 2
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# Train / evaluate
# --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast, distributed: bool, desc: str = "eval") -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and cross-entropy over the whole loader (all ranks)."""
    from tqdm import tqdm

    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    primary = not distributed or dist.get_rank() == 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not primary, mininterval=5, dynamic_ncols=True):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5.eq(labels[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += labels.numel()
    correct1, correct5, loss_sum, count = all_reduce_sum([correct1, correct5, loss_sum, count], device, distributed)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count, "count": int(count)}


def train_one_epoch(
    epoch: int,
    model: nn.Module,
    unwrapped_model: nn.Module,
    criterion: nn.Module,
    loader,
    optimizer,
    scheduler,
    mixup_fn,
    model_ema,
    scaler,
    autocast,
    num_updates: int,
    args: argparse.Namespace,
    device: torch.device,
    distributed: bool,
    primary: bool,
) -> tuple[Dict[str, float], int]:
    """One epoch of supervised training (``model``: DDP-wrapped or not; ``unwrapped_model``: the
    module the EMA follows). Returns ``({"loss", "img_per_s", "minutes"}, num_updates)``."""
    from timm.utils import dispatch_clip_grad

    model.train()
    meter = EpochMeter(loader, f"epoch {epoch}", device, distributed, primary, args.log_interval)
    clip = (lambda: dispatch_clip_grad(model.parameters(), args.clip_grad)) if args.clip_grad else None
    for step, (images, labels) in meter:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, labels = mixup_fn(images, labels)
        with autocast():
            outputs = model(images)
            loss = criterion(images, outputs, labels)
        loss_value = loss.item()
        check_finite(loss_value, device, distributed, f"epoch {epoch}, step {step} (update {num_updates})")
        backward(loss, optimizer, scaler, clip)
        scaler.step(optimizer)
        scaler.update()
        num_updates += 1
        if model_ema is not None:
            model_ema.update(unwrapped_model, step=num_updates)
        scheduler.step_update(num_updates=num_updates)
        meter.update(step, loss_value, images.shape[0], optimizer.param_groups[0]["lr"])
    return meter.summary(), num_updates
