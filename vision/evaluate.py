"""Evaluate a classifier on an ImageFolder split: top-1/top-5, parameters, FLOPs, throughput.

    python -m vision.evaluate --checkpoint runs/c10/best.pth --data-dir ../shared/data/cifar10/test
    python -m vision.evaluate --model resmlp_s12 --weights resmlp_12_no_dist.pth --data-dir /imagenet/val

For a ResMLP, the same weights are also evaluated in their folded form
(``timm.utils.reparameterize_model``) and in timm's own implementation
(:func:`vision.reference.timm_reference`), and the throughput (img/s) of the three is
measured in the same run, interleaved. Preprocessing: resize to ``img_size / crop_pct``,
centre crop, normalise (from the checkpoint, else the model's timm config; ResMLP: 0.9,
bicubic).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch
from timm.utils import ParseKwargs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vision.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a vision.train checkpoint")
    p.add_argument("--model", help="or: a timm model name, with --weights FILE (timm or DeiT format) or --pretrained")
    p.add_argument("--weights", help="weights for --model")
    p.add_argument("--pretrained", action="store_true", help="timm's pretrained weights for --model (download)")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs,
                   help="create_model arguments for --model, key=value")
    p.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of the checkpoint")
    p.add_argument("--data-dir", required=True, help="ImageFolder folder of the split to evaluate (<class>/<image>)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--interpolation", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--bad-images", default="error", choices=["error", "skip"],
                   help="an unreadable image file: stop naming it, or leave it out of every count and score "
                        "(listed in the report)")
    p.add_argument("--no-reference", action="store_true", help="skip the folded and timm-implementation comparisons")
    p.add_argument("--bench-batch", type=int, default=32, help="batch size of the throughput measurement (0: skip)")
    p.add_argument("--bench-rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .data import error_line

    try:
        return run(args, p)
    except (ValueError, FileNotFoundError) as err:  # bad input (BadImageError is a ValueError): one line, rc 2
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    import timm
    from timm.utils import reparameterize_model

    from . import checkpoint as ckpt_io
    from .speed import count_flops, interleaved
    from .config import check_model_name
    from .data import ImageFolderDataset, build_eval_transform, check_same_classes, find_classes
    from .engine import evaluate
    from .run import RunContext
    from .reference import timm_reference
    from .resmlp import ResMLP

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    classes = None
    if args.checkpoint:
        model, ckpt = ckpt_io.create_model_from_checkpoint(args.checkpoint, use_ema=args.use_ema)
        if ckpt.get("format") == ckpt_io.DINO_FORMAT:
            raise ValueError(f"{args.checkpoint} is a vision.dino checkpoint: a backbone without classifier. "
                             "Evaluate its features with python -m vision.knn / vision.linear, or fine-tune it "
                             "(vision.train --initial-checkpoint)")
        data_cfg = dict(ckpt["data_config"])
        classes = ckpt.get("classes")
        name = ckpt["model_name"]
    elif args.model:
        check_model_name(args.model)
        model = timm.create_model(args.model, pretrained=args.pretrained, **args.model_kwargs)
        if args.weights:
            ckpt_io.load_weights(model, ckpt_io.load_state_dict(args.weights, args.use_ema),
                                 what=f"weights {args.weights}")
        elif not args.pretrained:
            p.error("--model needs --weights FILE or --pretrained")
        data_cfg = timm.data.resolve_data_config({}, model=model)
        name = args.model
    else:
        p.error("give --checkpoint, or --model with --weights/--pretrained")
    img_size = args.img_size or data_cfg["input_size"][-1]
    crop_pct = args.crop_pct or data_cfg.get("crop_pct", 0.9)
    interpolation = args.interpolation or data_cfg.get("interpolation", "bicubic")
    root = Path(args.data_dir)
    found = find_classes(root)
    if classes is not None:
        check_same_classes(classes, found, Path(args.checkpoint), root)
    transform = build_eval_transform(img_size, crop_pct, interpolation, data_cfg["mean"], data_cfg["std"])
    # skip: unreadable files are left out up front (not replaced by another image), so every
    # count and score is over the readable images only, each once
    dataset = ImageFolderDataset(
        root, transform, found, bad_images=args.bad_images, max_per_class=args.max_per_class,
        cache_threads=max(1, args.workers), check_readable=True,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    model = model.to(device).eval()

    variants: Dict[str, torch.nn.Module] = {"ours": model}
    if isinstance(model, ResMLP) and not args.no_reference:
        variants["timm"] = timm_reference(model)
        variants["ours_folded"] = reparameterize_model(model)
    null = lambda: torch.autocast(device.type, enabled=False)  # noqa: E731  (fp32 everywhere)
    report: Dict[str, Any] = {
        "model": name,
        "source": args.checkpoint or args.weights or "timm pretrained",
        "data_dir": str(root),
        "images": len(dataset),
        "skipped_files": list(dataset.skipped),
        "preprocessing": {"img_size": img_size, "crop_pct": crop_pct, "interpolation": interpolation,
                          "mean": list(data_cfg["mean"]), "std": list(data_cfg["std"])},
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs_per_image": count_flops(model, torch.randn(1, 3, img_size, img_size, device=device)) / 2e9,
        "accuracy": {},
        "throughput_img_per_s": {},
    }
    for key, m in variants.items():
        t0 = time.perf_counter()
        report["accuracy"][key] = evaluate(m, loader, RunContext(device, autocast=null), desc=f"eval {key}")
        report["accuracy"][key]["seconds"] = time.perf_counter() - t0
    if args.bench_batch:
        x = torch.randn(args.bench_batch, 3, img_size, img_size, device=device)

        def make(m):
            def run():
                with torch.inference_mode():
                    m(x)

            return run

        times = interleaved({k: make(m) for k, m in variants.items()}, args.bench_rounds, device)
        report["throughput_img_per_s"] = {k: args.bench_batch / statistics.median(v) for k, v in times.items()}
        report["throughput_batch"] = args.bench_batch

    print(f"{name}: {report['params']:,} params, {report['gmacs_per_image']:.3f} GMACs/image, "
          f"{len(dataset)} images from {root}")
    if dataset.skipped:
        print(f"  skipped {len(dataset.skipped)} unreadable image file(s), left out of every count and score: "
              f"{', '.join(dataset.skipped)}")
    for key, acc in report["accuracy"].items():
        ips = report["throughput_img_per_s"].get(key)
        speed = f", {ips:.1f} img/s at batch {args.bench_batch}" if ips else ""
        print(f"  {key:12s} top-1 {acc['top1']:.2f}  top-5 {acc['top5']:.2f}  loss {acc['loss']:.4f}{speed}")
    if "timm" in report["throughput_img_per_s"]:
        tp = report["throughput_img_per_s"]
        print(f"  speed vs timm's implementation: ours x{tp['ours'] / tp['timm']:.2f}, "
              f"folded x{tp['ours_folded'] / tp['timm']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
