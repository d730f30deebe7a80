"""Linear probe on frozen features: multinomial logistic regression on the backbone's features.

    python -m vision.linear --checkpoint runs/dino_c10/last.pth --data-dir ../shared/data/cifar10 --val-split test \
        --out results/linear
    python -m vision.linear --model resmlp_s12 --weights resmlp_12_dino.pth --data-dir /data/imagenet

The features of every training and validation image are extracted once (evaluation transform,
no augmentation; :mod:`vision.features` lists the backbones it takes), standardised with the
training mean and standard deviation, and a linear layer ``(D -> classes)`` is fitted by full-batch
L-BFGS on cross-entropy + ``wd * ||W||^2 / 2``. With several ``--weight-decay`` values, each is
fitted on 90% of the training features and scored on the other 10% (a fixed split, ``--seed``);
the best is refitted on all of them. This is the fast probe of the features themselves; DINO's
``eval_linear.py`` instead trains the layer for 100 epochs on augmented crops (SGD), which
usually scores a few points higher and costs 100 passes of the backbone.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F

from .features import (
    add_backbone_arguments,
    check_backbone_arguments,
    describe,
    features_or_error,
    report_header,
    topk_accuracy,
    write_report,
)


def fit_linear(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W (C, D), b (C,))`` minimising ``mean CE(x W^T + b, y) + weight_decay * ||W||^2 / 2`` by
    L-BFGS (strong Wolfe line search) from zero; ``x (N, D)`` float, ``y (N,)`` in ``[0, C)``, on
    ``x``'s device. float64 up to 5e7 feature values (CIFAR: 50k x 384), float32 beyond (ImageNet)."""
    dtype = torch.float64 if x.numel() <= 50_000_000 else torch.float32
    x, y = x.to(dtype), y.to(x.device)
    W = torch.zeros(num_classes, x.shape[1], dtype=dtype, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W.T + b, y) + 0.5 * weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().float().to(x.device), b.detach().float()


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every column by the training features' mean and std (``(N, D)`` each)."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def run_probe(features: Dict[str, Any], weight_decays: Sequence[float], max_iter: int, seed: int) -> Dict[str, Any]:
    (train_x, train_y), (val_x, val_y) = features["train"], features["val"]
    num_classes = len(features["classes"])
    device = torch.device(features.get("device", "cpu"))  # fit where the features were computed (a GPU for ImageNet)
    train_x, val_x = standardize(train_x.to(device), val_x.to(device))
    train_y, val_y = train_y.to(device), val_y.to(device)
    selection = {}
    chosen = weight_decays[0]
    if len(weight_decays) > 1:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(train_x.shape[0], generator=g).to(device)
        n_hold = max(1, train_x.shape[0] // 10)
        hold, fit = perm[:n_hold], perm[n_hold:]
        for wd in weight_decays:
            W, b = fit_linear(train_x[fit], train_y[fit], num_classes, wd, max_iter)
            selection[str(wd)] = topk_accuracy((train_x[hold] @ W.T + b).cpu(), train_y[hold].cpu())["top1"]
        chosen = max(weight_decays, key=lambda wd: (selection[str(wd)], wd))  # ties: the stronger decay
    W, b = fit_linear(train_x, train_y, num_classes, chosen, max_iter)
    return {
        "weight_decay": chosen,
        "held_out_top1_by_weight_decay": selection,
        "train": topk_accuracy((train_x @ W.T + b).cpu(), train_y.cpu()),
        "val": topk_accuracy((val_x @ W.T + b).cpu(), val_y.cpu()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vision.linear", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_arguments(p)
    p.add_argument("--weight-decay", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2],
                   help="L2 penalties to choose from")
    p.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    check_backbone_arguments(args, p)
    if any(wd < 0 for wd in args.weight_decay) or args.max_iter < 1:
        p.error("--weight-decay must be >= 0 and --max-iter >= 1")
    features = features_or_error(args)
    if features is None:
        return 2
    start = time.perf_counter()
    result = run_probe(features, args.weight_decay, args.max_iter, args.seed)
    report = {
        **report_header("linear probe on frozen features (logistic regression, L-BFGS, standardised features)",
                        features, args),
        "max_iter": args.max_iter,
        "result": result,
        "seconds": {"features": features["extract_seconds"], "probe": time.perf_counter() - start},
    }
    print(f"linear probe on {describe(features['backbone'])}: {args.val_split} top-1 {result['val']['top1']:.2f} top-5 "
          f"{result['val']['top5']:.2f} (train top-1 {result['train']['top1']:.2f}, "
          f"weight decay {result['weight_decay']:g})")
    if args.out:
        md = ["# Linear probe\n", f"Backbone: {describe(features['backbone'])}.\n",
              f"Data: `{args.data_dir}` {args.train_split} ({report['data']['train_images']} images) -> "
              f"{args.val_split} ({report['data']['val_images']} images). Logistic regression on standardised "
              f"{report['feature_dim']}-d features, L-BFGS ({args.max_iter} iterations), weight decay "
              f"{result['weight_decay']:g} (chosen on 10% of the training features from {args.weight_decay}).\n",
              "| split | top-1 | top-5 |", "|---|---:|---:|",
              f"| {args.train_split} | {result['train']['top1']:.2f} | {result['train']['top5']:.2f} |",
              f"| {args.val_split} | {result['val']['top1']:.2f} | {result['val']['top5']:.2f} |"]
        paths = write_report(args.out, report, "\n".join(md) + "\n")
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
