"""Weighted k-NN classification on frozen features (DINO's ``eval_knn.py``).

    python -m vision.knn --checkpoint runs/dino_c10/last.pth --data-dir ../shared/data/cifar10 --val-split test \
        --out results/knn
    python -m vision.knn --model resmlp_s12 --weights resmlp_12_dino.pth --data-dir /data/imagenet
    python -m vision.knn --model resmlp_s12.fb_dino --pretrained --data-dir /data/imagenet

Features of the training and validation images (evaluation transform, no augmentation; see
:mod:`vision.features` for the backbones it takes) are l2-normalised. Each validation image
votes with its ``k`` most cosine-similar training images, neighbour ``j`` with weight
``exp(s_j / T)`` for its class; the class with the largest sum is the prediction. DINO's
defaults: ``k = 20`` (``--k 10 20 100 200`` gives several), ``T = 0.07``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
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


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 256,
) -> torch.Tensor:
    """Class scores ``(n_test, num_classes)`` (on the CPU) of DINO's weighted k-NN: ``score[c] = sum over the k
    nearest training rows j of class c of exp(cos(test, train_j) / temperature)``.

    ``train_features (n_train, D)``, ``train_labels (n_train,)`` in ``[0, num_classes)``,
    ``test_features (n_test, D)``; features are l2-normalised here. ``k`` larger than
    ``n_train`` is an error."""
    if k < 1 or k > train_features.shape[0]:
        raise ValueError(f"k = {k} needs 1 <= k <= the {train_features.shape[0]} training images")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1).to(train.device)
    labels = train_labels.long().to(train.device)
    scores = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T  # (b, n_train) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1, largest=True, sorted=True)  # (b, k)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(top_idx.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[top_idx], weights)
        scores.append(votes.cpu())
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def run_knn(features: Dict[str, Any], ks: Sequence[int], temperature: float) -> Dict[str, Any]:
    (train_x, train_y), (val_x, val_y) = features["train"], features["val"]
    num_classes = len(features["classes"])
    # the similarities where the features were computed (a GPU for ImageNet)
    device = torch.device(features.get("device", "cpu"))
    train_x, train_y = train_x.to(device), train_y.to(device)
    results = {}
    for k in ks:
        k_used = k
        if k > train_x.shape[0]:
            k_used = train_x.shape[0]
            warnings.warn(f"k = {k} is more than the {train_x.shape[0]} training images: using k = {k_used}")
        scores = knn_scores(train_x, train_y, val_x, k_used, temperature, num_classes)
        results[str(k)] = {**topk_accuracy(scores, val_y), "k_used": k_used}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vision.knn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_arguments(p)
    p.add_argument("--k", type=int, nargs="+", default=[20], help="numbers of neighbours")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    check_backbone_arguments(args, p)
    if any(k < 1 for k in args.k) or args.temperature <= 0:
        p.error("--k must be positive and --temperature > 0")
    features = features_or_error(args)
    if features is None:
        return 2
    start = time.perf_counter()
    results = run_knn(features, args.k, args.temperature)
    report = {
        **report_header("weighted k-NN on frozen features (DINO eval_knn)", features, args),
        "temperature": args.temperature,
        "results": results,
        "seconds": {"features": features["extract_seconds"], "knn": time.perf_counter() - start},
    }
    lines = [f"k-NN (T={args.temperature}) on {describe(features['backbone'])}: "
             f"{report['data']['train_images']} train / {report['data']['val_images']} {args.val_split} images, "
             f"{report['feature_dim']}-d features"]
    for k, r in results.items():
        lines.append(f"  k={k}: top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}")
    print("\n".join(lines))
    if args.out:
        md = ["# k-NN evaluation\n", f"Backbone: {describe(features['backbone'])}.\n",
              f"Data: `{args.data_dir}` {args.train_split} ({report['data']['train_images']} images) -> "
              f"{args.val_split} ({report['data']['val_images']} images), transform {features['data_config']}; "
              f"temperature {args.temperature}.\n",
              "| k | top-1 | top-5 |", "|---:|---:|---:|"]
        md += [f"| {k} | {r['top1']:.2f} | {r['top5']:.2f} |" for k, r in results.items()]
        paths = write_report(args.out, report, "\n".join(md) + "\n")
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
