"""Train an image classifier with the DeiT recipe, through timm's own building blocks.

    python -m vision.train --config imagenet_s12 --data-dir /data/imagenet --output runs/s12
    torchrun --nproc_per_node 8 -m vision.train --config imagenet_s12 --data-dir ... --output ...
    python -m vision.train --config cifar10_cpu --data-dir ../shared/data/cifar10 --output runs/c10

timm provides the optimizer (LAMB, no weight decay on biases, Affine and LayerScale), the
schedule (cosine with warmup), RandAugment, Mixup/CutMix, random erasing, repeated
augmentation, label smoothing and EMA; DeiT's distillation loss is in :mod:`vision.losses`.

Output folder: ``last.pth`` (every epoch), ``best.pth`` (best top-1), ``summary.csv`` (one row
per epoch), ``log.txt``, ``args.yaml``. Each file is written atomically (a temporary file, then a
rename), at the end of an epoch in this order: the ``summary.csv`` row, ``last.pth`` (which
records the epoch, the best epoch so far and every summary row), then ``best.pth``. A run killed
between two of them is put right by ``--resume auto``: rows past ``last.pth``'s epoch are dropped,
missing rows are rewritten from ``last.pth``, a ``best.pth`` older than the best epoch recorded in
``last.pth`` is rewritten from it (a warning says so), and temporary files left by a kill are
deleted. ``--resume auto`` (or a path) continues exactly where ``last.pth`` stopped: model,
optimizer, schedule, sampler epoch, random generators, EMA and gradient scaler.

A non-finite loss stops the run with a message; the last checkpoint (the end of the last
complete epoch) is left as it was.

This module is the CLI and the wiring (deit's ``main.py``); the training and evaluation loops
are in :mod:`vision.engine`, the process set-up shared with :mod:`vision.dino` (options of the
device, distributed start, log, exit status) in :mod:`vision.run`, the checkpoint and
output-folder format (writer and reader) in :mod:`vision.checkpoint`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import yaml
from timm.utils import ParseKwargs, random_seed, unwrap_model
from torch import nn

from . import checkpoint as ckpt_io
from .config import check_model_name
from .data import (
    ImageFolderDataset,
    ShardSampler,
    build_eval_transform,
    build_train_transform,
    build_train_sampler,
    check_same_classes,
    find_classes,
)
from .engine import evaluate, train_one_epoch
from .losses import DISTILLATION_TYPES, DistillationLoss
from .resmlp import MODEL_NAMES
from .run import RunContext, add_device_args, launch, parse_run_args, with_model_kwargs

_logger = logging.getLogger("vision.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vision.train",
        description="Train a timm image classifier (ResMLP: resmlp_s12, ...) with the DeiT recipe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", "-c", default=None,
                   help="YAML file, or a name in vision/configs (its keys are these options)")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="ImageFolder root holding the train and val splits")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--dataset-cache", default="none", choices=["none", "memory"],
                   help="memory: decode every image once (small datasets)")
    g.add_argument("--bad-images", default="error", choices=["error", "skip"],
                   help="an unreadable image file: stop naming it, or skip it with a warning")
    g.add_argument("--max-per-class", type=int, default=None, help="use the first K training images of each class")
    g.add_argument("--val-max-per-class", type=int, default=None,
                   help="use the first K validation images of each class")
    g.add_argument("--workers", "-j", type=int, default=4, help="data loader processes per training process")
    g.add_argument("--pin-mem", action=argparse.BooleanOptionalAction, default=True)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resmlp_s12", help="timm model name (ResMLP: " + ", ".join(MODEL_NAMES) + ")")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs,
                   help="extra create_model arguments, key=value")
    g.add_argument("--img-size", type=int, default=224,
                   help="input resolution (passed to ResMLP models, which need it)")
    g.add_argument("--drop", type=float, default=0.0, help="dropout before the classifier")
    g.add_argument("--drop-path", type=float, default=0.05,
                   help="stochastic depth rate (ResMLP: the same at every depth)")
    g.add_argument("--initial-checkpoint", default=None,
                   help="start from these weights (vision.train, vision.dino, timm or DeiT checkpoint); "
                        "a head of another size, or none, gives a new head")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--opt", default="lamb", help="timm optimizer name")
    g.add_argument("--opt-eps", type=float, default=None)
    g.add_argument("--opt-betas", type=float, nargs=2, default=None)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=0.2)
    g.add_argument("--clip-grad", type=float, default=None)
    g.add_argument("--lr", type=float, default=5e-3)
    g.add_argument(
        "--lr-scale",
        default="none",
        choices=["none", "linear"],
        help="linear: use lr * global_batch / lr-base-size (DeiT's main.py in 2021); none: --lr is the rate used",
    )
    g.add_argument("--lr-base-size", type=int, default=512)
    g.add_argument("--sched", default="cosine")
    g.add_argument("--epochs", type=int, default=400)
    g.add_argument("--warmup-epochs", type=float, default=5)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--sched-on-updates", action=argparse.BooleanOptionalAction, default=False,
                   help="update the lr every step, not every epoch")
    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--train-crop", default="rrc", choices=["rrc", "pad"],
                   help="rrc: RandomResizedCrop (DeiT); pad: pad-and-crop (small images)")
    g.add_argument("--crop-pad", type=int, default=4, help="padding of --train-crop pad")
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment string; 'none' for none")
    g.add_argument("--color-jitter", type=float, default=0.3)
    g.add_argument("--train-interpolation", default="bicubic")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--remode", default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--repeated-aug", type=int, default=3, help="repeated augmentation: repeats per image (0 or 1: off)")
    g.add_argument("--mixup", type=float, default=0.8)
    g.add_argument("--cutmix", type=float, default=1.0)
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--mixup-mode", default="batch")
    g.add_argument("--smoothing", type=float, default=0.1)
    g.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--model-ema-decay", type=float, default=0.99996)
    g = p.add_argument_group("evaluation")
    g.add_argument("--crop-pct", type=float, default=0.9, help="eval: resize to img_size / crop_pct, centre crop")
    g.add_argument("--interpolation", default="bicubic", help="eval resize interpolation")
    g.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    g.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    g.add_argument("--eval-interval", type=int, default=1, help="evaluate every N epochs (and after the last)")
    g.add_argument("--batch-size-eval", type=int, default=None)
    g = p.add_argument_group("distillation")
    g.add_argument("--distillation-type", default="none", choices=DISTILLATION_TYPES)
    g.add_argument("--teacher-model", default=None, help="timm model name of the teacher (e.g. regnety_160)")
    g.add_argument("--teacher-path", default=None,
                   help="teacher weights: a vision.train checkpoint, or a timm-format file")
    g.add_argument("--teacher-pretrained", action="store_true", help="download timm's pretrained teacher weights")
    g.add_argument("--distillation-alpha", type=float, default=0.5)
    g.add_argument("--distillation-tau", type=float, default=1.0)
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", "-b", type=int, default=64, help="per process")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output", required=False, default=None, help="output folder (checkpoints, logs)")
    g.add_argument("--resume", default=None,
                   help="a checkpoint to continue from, or 'auto' (OUTPUT/last.pth if present)")
    g.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop after this epoch (0-based) although the schedule spans --epochs")
    add_device_args(g)
    return p


# --------------------------------------------------------------------------------------
# Set-up helpers
# --------------------------------------------------------------------------------------


def model_create_kwargs(args: argparse.Namespace, num_classes: int) -> Dict[str, Any]:
    """The ``timm.create_model`` keyword arguments of this run (stored in checkpoints)."""
    return with_model_kwargs(args, num_classes=num_classes, drop_rate=args.drop, drop_path_rate=args.drop_path)


def build_teacher(args: argparse.Namespace, num_classes: int, device: torch.device) -> Optional[nn.Module]:
    import timm

    if args.distillation_type == "none":
        return None
    if args.teacher_path and ckpt_io.is_training_checkpoint(ckpt_io.load(args.teacher_path)):
        teacher, _ = ckpt_io.create_model_from_checkpoint(args.teacher_path)
    elif args.teacher_model:
        check_model_name(args.teacher_model)
        teacher = timm.create_model(args.teacher_model, pretrained=args.teacher_pretrained, num_classes=num_classes)
        if args.teacher_path:
            ckpt_io.load_weights(teacher, ckpt_io.load_state_dict(args.teacher_path),
                                 what=f"teacher weights {args.teacher_path}")
        elif not args.teacher_pretrained:
            raise ValueError("the teacher has no weights: give --teacher-path FILE or --teacher-pretrained")
    else:
        raise ValueError(f"{args.distillation_type} distillation needs --teacher-path (a vision.train checkpoint) "
                         "or --teacher-model")
    teacher_classes = getattr(teacher, "num_classes", num_classes)
    if teacher_classes != num_classes:
        raise ValueError(f"the teacher predicts {teacher_classes} classes, the data has {num_classes}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parse_run_args(parser, argv)
    if args.teacher_model:
        check_model_name(args.teacher_model, parser)
    return launch(args, _run, _logger)


def _run(args: argparse.Namespace, ctx: RunContext, output: Path) -> int:
    import timm
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    random_seed(args.seed, ctx.rank)

    # ---- data
    root = Path(args.data_dir)
    train_root, val_root = root / args.train_split, root / args.val_split
    classes = find_classes(train_root)
    check_same_classes(classes, find_classes(val_root), train_root, val_root)
    num_classes = len(classes)
    aa = None if str(args.aa).lower() in ("none", "", "null") else args.aa
    train_tf = build_train_transform(
        args.img_size,
        train_crop=args.train_crop,
        pad=args.crop_pad,
        hflip=args.hflip,
        auto_augment=aa,
        color_jitter=args.color_jitter,
        interpolation=args.train_interpolation,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        mean=args.mean,
        std=args.std,
    )
    eval_tf = build_eval_transform(args.img_size, args.crop_pct, args.interpolation, args.mean, args.std)
    train_set = ImageFolderDataset(
        train_root, train_tf, classes, cache=args.dataset_cache, bad_images=args.bad_images,
        max_per_class=args.max_per_class, cache_threads=min(8, os.cpu_count() or 1),
    )
    val_set = ImageFolderDataset(  # unreadable files (skip) are left out: each image is scored once
        val_root, eval_tf, classes, cache=args.dataset_cache, bad_images=args.bad_images,
        max_per_class=args.val_max_per_class, cache_threads=min(8, os.cpu_count() or 1), check_readable=True,
    )
    if val_set.skipped:
        _logger.warning(f"validation: left out {len(val_set.skipped)} unreadable image file(s): "
                        f"{', '.join(val_set.skipped[:20])}"
                        + (f" and {len(val_set.skipped) - 20} more" if len(val_set.skipped) > 20 else ""))
    sampler = build_train_sampler(train_set, args.repeated_aug, ctx.rank, ctx.world_size, args.seed)
    pin_memory = args.pin_mem and ctx.device.type == "cuda"
    loader_kw = dict(num_workers=args.workers, pin_memory=pin_memory, persistent_workers=False)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                                               **loader_kw)
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=args.batch_size_eval or args.batch_size,
        sampler=ShardSampler(len(val_set), ctx.rank, ctx.world_size), **loader_kw,
    )
    if len(train_loader) == 0:
        raise ValueError(f"{len(sampler)} training images per process is less than one batch of {args.batch_size}")
    _logger.info(
        f"data: {len(train_set)} training images ({train_root}), {len(val_set)} validation images ({val_root}), "
        f"{num_classes} classes; {ctx.world_size} process(es) on {ctx.device}, {len(train_loader)} steps per epoch"
    )

    # ---- model
    model_kwargs = model_create_kwargs(args, num_classes)
    model = timm.create_model(args.model, **model_kwargs)
    if args.initial_checkpoint:
        loaded = ckpt_io.load_initial_weights(model, ckpt_io.load_state_dict(args.initial_checkpoint),
                                              what=f"initial checkpoint {args.initial_checkpoint}")
        _logger.info(loaded)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(ctx.device)
    n_params = sum(p.numel() for p in model.parameters())
    _logger.info(f"model: {args.model} {model_kwargs}, {n_params:,} parameters")
    teacher = build_teacher(args, num_classes, ctx.device)
    if teacher is not None:
        _logger.info(
            f"distillation: {args.distillation_type} (alpha {args.distillation_alpha}, tau {args.distillation_tau}), "
            f"teacher {type(teacher).__name__} from {args.teacher_path or args.teacher_model}, "
            f"{sum(p.numel() for p in teacher.parameters()):,} parameters"
        )

    global_batch = args.batch_size * ctx.world_size
    lr = args.lr * global_batch / args.lr_base_size if args.lr_scale == "linear" else args.lr
    opt_kwargs = {}
    if args.opt_eps is not None:
        opt_kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs["betas"] = tuple(args.opt_betas)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum,
                                    **opt_kwargs)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=args.sched,
        num_epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr,
        min_lr=args.min_lr,
        step_on_epochs=not args.sched_on_updates,
        updates_per_epoch=len(train_loader),
    )
    _logger.info(f"optimizer: {args.opt}, lr {lr:.3g} (global batch {global_batch}, lr scale {args.lr_scale}), "
                 f"weight decay {args.weight_decay}")
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None

    mixup_active = args.mixup > 0 or args.cutmix > 0
    mixup_fn = None
    if mixup_active:
        if args.batch_size % 2:
            raise ValueError(f"Mixup/CutMix need an even batch size, got --batch-size {args.batch_size}")
        mixup_fn = Mixup(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob, switch_prob=args.mixup_switch_prob,
            mode=args.mixup_mode, label_smoothing=args.smoothing, num_classes=num_classes,
        )
        base_criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        base_criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        base_criterion = nn.CrossEntropyLoss()
    criterion = DistillationLoss(base_criterion, teacher, args.distillation_type, args.distillation_alpha,
                                 args.distillation_tau)

    # ---- resume
    start_epoch, num_updates, best = 0, 0, {"top1": -1.0, "epoch": -1}
    history: list[Dict[str, Any]] = []  # the summary.csv rows so far (stored in last.pth, to repair the CSV)
    if ctx.primary:
        ckpt_io.prepare_output(output, _logger)
    resume_path = ckpt_io.latest(output) if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    resume_state = None
    resumed_ckpt: Optional[Dict[str, Any]] = None
    if resume_path is not None:
        state = ckpt_io.load(resume_path)
        if not ckpt_io.is_training_checkpoint(state):
            raise ValueError(f"--resume {resume_path}: not a vision.train checkpoint "
                             "(use --initial-checkpoint for weights only)")
        if state["model_name"] != args.model:
            raise ValueError(f"--resume {resume_path}: the checkpoint is of model {state['model_name']}, "
                             f"this run trains {args.model}")
        if state.get("classes") != classes:
            raise ValueError(f"--resume {resume_path}: the checkpoint was trained on other classes than {train_root}")
        ckpt_io.load_weights(model, state["model"], what=f"resumed checkpoint {resume_path}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ctx.scaler.load_state_dict(state["scaler"])
        if model_ema is not None:
            if state.get("model_ema") is None:
                raise ValueError(f"--resume {resume_path}: --model-ema is on but the checkpoint has no EMA weights")
            model_ema.module.load_state_dict(state["model_ema"])
        start_epoch, num_updates = state["epoch"] + 1, state["num_updates"]
        best = state.get("best", best)
        history = list(state.get("summary") or [])
        resume_state = state["rng"]
        resumed_ckpt = {"epoch": state["epoch"], "best": best, "summary": state.get("summary")}
        _logger.info(f"resumed from {resume_path}: epoch {state['epoch']} done, {num_updates} updates")
        del state

    if args.compile:
        model = torch.compile(model)
    train_model = ctx.wrap(model)

    if ctx.primary:
        with open(output / "args.yaml", "w") as fh:
            yaml.safe_dump({**vars(args), "effective_lr": lr, "world_size": ctx.world_size}, fh, sort_keys=False)
    summary_csv = output / "summary.csv"
    if ctx.primary:
        ckpt_io.trim_summary_atomic(summary_csv, start_epoch)
        if resumed_ckpt is not None and resume_path.resolve() == (output / "last.pth").resolve():
            ckpt_io.reconcile_outputs(output, resume_path, resumed_ckpt)
        if resumed_ckpt is not None and best["epoch"] >= 0:
            _logger.info(f"best so far: top-1 {best['top1']:.2f} at epoch {best['epoch']}")

    if resume_state is not None:
        ckpt_io.restore_rng_state(resume_state, ctx.rank, ctx.world_size, _logger)

    last_epoch = args.epochs - 1 if args.stop_after_epoch is None else min(args.epochs - 1, args.stop_after_epoch)
    for epoch in range(start_epoch, last_epoch + 1):
        sampler.set_epoch(epoch)
        train_metrics, num_updates = train_one_epoch(
            train_model, criterion, train_loader, optimizer, scheduler, ctx,
            epoch=epoch, num_updates=num_updates, mixup_fn=mixup_fn, model_ema=model_ema,
        )
        scheduler.step(epoch + 1)
        metrics: Dict[str, float] = {}
        if (epoch + 1) % args.eval_interval == 0 or epoch == args.epochs - 1 or epoch == last_epoch:
            metrics = evaluate(model, val_loader, ctx)
            if model_ema is not None:
                ema_metrics = evaluate(model_ema.module, val_loader, ctx, desc="eval ema")
                metrics.update({f"ema_{k}": v for k, v in ema_metrics.items() if k != "count"})
        lr_now = optimizer.param_groups[0]["lr"]
        msg = (f"epoch {epoch}: train loss {train_metrics['loss']:.4f}, {train_metrics['img_per_s']:.1f} img/s, "
               f"{train_metrics['minutes']:.2f} min")
        if metrics:
            msg += f"; val top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f} loss {metrics['loss']:.4f}"
            if "ema_top1" in metrics:
                msg += f"; EMA top-1 {metrics['ema_top1']:.2f}"
        _logger.info(msg + f"; lr {lr_now:.3g}")

        rng = ckpt_io.gather_rng_state(ctx.world_size, ctx.distributed)  # every rank's generator states
        if ctx.primary:
            is_best = bool(metrics) and metrics["top1"] > best["top1"]
            if is_best:
                best = {"top1": metrics["top1"], "epoch": epoch}
            row = {"epoch": epoch, "train": dict(train_metrics),
                   "eval": {k: v for k, v in metrics.items() if k != "count"}, "lr": lr_now}
            history = [*history, row]
            state = {
                "format": ckpt_io.FORMAT,
                "model_name": args.model,
                "model_kwargs": model_kwargs,
                "classes": classes,
                "data_config": ckpt_io.data_config(args.img_size, args.crop_pct, args.interpolation, args.mean,
                                                   args.std),
                "model": unwrap_model(model).state_dict(),
                "model_ema": model_ema.module.state_dict() if model_ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": ctx.scaler.state_dict(),
                "epoch": epoch,
                "num_updates": num_updates,
                "rng": rng,
                "args": ckpt_io.args_dict(args),
                "metrics": metrics,
                "best": best,
                "summary": history,
            }
            ckpt_io.write_epoch(output, state, row, is_best)  # summary.csv row, last.pth, best.pth: in this order
        if ctx.distributed:
            dist.barrier()
    if ctx.primary:
        _logger.info(f"done: best top-1 {best['top1']:.2f} at epoch {best['epoch']}; checkpoints in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
