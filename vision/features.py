"""Frozen features of any checkpoint, for the k-NN and linear-probe evaluations
(:mod:`vision.knn`, :mod:`vision.linear`).

A backbone is given as one of:

* ``--checkpoint FILE``: a ``vision.dino`` checkpoint (the teacher's backbone, as DINO
  evaluates) or a ``vision.train`` checkpoint (its classifier removed); the architecture and
  the evaluation transform come from the file;
* ``--model NAME --weights FILE``: any weights file of that model: timm's layout (including
  timm's ``resmlp_12_224.fb_dino``), the DeiT repository's, a DINO ``checkpoint.pth``; read
  through the project's checkpoint mapping, classifier dropped;
* ``--model NAME --pretrained``: timm's pretrained weights (``resmlp_s12.fb_dino``, ...);
* ``--random-init`` with either: the same architecture, freshly initialised (``--seed``).

Features are the pooled, pre-classifier outputs of the backbone (``num_classes=0``): for a
ResMLP the mean over patches after the final Affine, ``(B, embed_dim)``.

``--features-cache FILE`` keeps them: the k-NN and the linear probe of one backbone then extract
them once. The file records what the features depend on (the backbone's flags and files, with
their size and modification time, the data folder, splits and transform); a file made from
anything else is not used, and is replaced by the new extraction.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from timm.utils import ParseKwargs, accuracy
from torch import nn

from resmlp_core import io as safe_io

from . import checkpoint as ckpt_io

_logger = logging.getLogger(__name__)


def add_backbone_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone (one of)")
    g.add_argument("--checkpoint", default=None, help="a vision.dino (teacher backbone) or vision.train checkpoint")
    g.add_argument("--model", default=None,
                   help="a timm model name, with --weights FILE, --pretrained or --random-init")
    g.add_argument("--weights", default=None, help="weights file for --model (timm, DeiT or DINO layout)")
    g.add_argument("--pretrained", action="store_true",
                   help="timm's pretrained weights of --model (e.g. resmlp_s12.fb_dino)")
    g.add_argument("--random-init", action="store_true",
                   help="the architecture of --checkpoint / --model, randomly initialised")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs,
                   help="create_model arguments for --model, key=value")
    g.add_argument("--use-ema", action="store_true", help="the EMA weights of a vision.train checkpoint")
    g.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    g = p.add_argument_group("data and evaluation transform")
    g.add_argument("--data-dir", required=True, help="ImageFolder root holding the train and val splits")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--max-per-class", type=int, default=None, help="the first K training images of each class")
    g.add_argument("--val-max-per-class", type=int, default=None, help="the first K validation images of each class")
    g.add_argument("--dataset-cache", default="none", choices=["none", "memory"])
    g.add_argument("--img-size", type=int, default=None, help="default: the checkpoint's or the model's")
    g.add_argument("--crop-pct", type=float, default=None, help="default: the checkpoint's or the model's")
    g.add_argument("--interpolation", default=None)
    g.add_argument("--mean", type=float, nargs=3, default=None)
    g.add_argument("--std", type=float, nargs=3, default=None)
    g.add_argument("--batch-size", "-b", type=int, default=128)
    g.add_argument("--workers", "-j", type=int, default=2)
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--features-cache", default=None,
                   help="a .pt file: reuse the features kept there if they were made from the same backbone, data and "
                        "transform; else extract them and keep them there")


def check_backbone_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """One way of giving the backbone; files that exist (the error names what is wrong)."""
    if bool(args.checkpoint) == bool(args.model):
        parser.error("give --checkpoint FILE, or --model NAME with --weights FILE / --pretrained / --random-init")
    if args.model and sum([bool(args.weights), args.pretrained, args.random_init]) != 1:
        parser.error(f"--model {args.model}: give exactly one of --weights FILE, --pretrained, --random-init")
    if args.checkpoint and (args.weights or args.pretrained):
        parser.error("--weights and --pretrained go with --model, not with --checkpoint")
    for flag, path in (("--checkpoint", args.checkpoint), ("--weights", args.weights)):
        if path and not Path(path).is_file():
            parser.error(f"{flag} {path}: no such file")
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir}: no such folder")
    if args.model:
        from .config import check_model_name

        check_model_name(args.model.split(".")[0], parser)


def load_backbone(args: argparse.Namespace) -> tuple[nn.Module, Dict[str, Any]]:
    """``(backbone in eval mode with num_classes=0, description)``; the description has
    ``source``, ``kind`` (``dino``, ``supervised``, ``weights``, ``pretrained``, ``random``),
    ``model_name``, ``model_kwargs`` and ``data_config`` (``None`` when the file has none)."""
    import timm

    if args.checkpoint:
        ckpt = ckpt_io.load(args.checkpoint, mmap=True)
        if not ckpt_io.is_model_checkpoint(ckpt):
            raise ValueError(
                f"--checkpoint {args.checkpoint} is not a vision.dino or vision.train checkpoint "
                "(it does not name its model); "
                "for a weights file give --model NAME --weights FILE"
            )
        name, kwargs = ckpt["model_name"], {**ckpt["model_kwargs"], "num_classes": 0, "drop_path_rate": 0.0}
        kind = "dino" if ckpt.get("format") == ckpt_io.DINO_FORMAT else "supervised"
        info = {"source": str(args.checkpoint), "model_name": name, "model_kwargs": kwargs,
                "data_config": ckpt.get("data_config"), "epoch": ckpt.get("epoch")}
        if args.random_init:
            torch.manual_seed(args.seed)
            model = timm.create_model(name, **kwargs)
            info.update(kind="random",
                        source=f"random init (seed {args.seed}) of the architecture of {args.checkpoint}")
        else:
            model = timm.create_model(name, **kwargs)
            sd = ckpt_io.state_dict_of(ckpt_io.load(args.checkpoint), args.use_ema,
                                       what=f"checkpoint {args.checkpoint}")
            ckpt_io.load_initial_weights(model, sd, what=f"checkpoint {args.checkpoint}")
            info["kind"] = kind
        return model.eval(), info
    kwargs = {"num_classes": 0, **(args.model_kwargs or {})}
    if args.random_init:
        torch.manual_seed(args.seed)
        model = timm.create_model(args.model, **kwargs)
        info = {"kind": "random", "source": f"random init (seed {args.seed})"}
    elif args.pretrained:
        model = timm.create_model(args.model, pretrained=True, **kwargs)
        info = {"kind": "pretrained",
                "source": f"timm pretrained {model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url')}"}
    else:
        model = timm.create_model(args.model, **kwargs)
        ckpt_io.load_initial_weights(model, ckpt_io.load_state_dict(args.weights, args.use_ema),
                                     what=f"weights {args.weights}")
        info = {"kind": "weights", "source": str(args.weights)}
    cfg = model.pretrained_cfg
    info.update(model_name=args.model, model_kwargs=kwargs, data_config={
        "input_size": tuple(cfg.get("input_size", (3, 224, 224))), "crop_pct": cfg.get("crop_pct", 0.875),
        "interpolation": cfg.get("interpolation", "bicubic"), "mean": tuple(cfg.get("mean")),
        "std": tuple(cfg.get("std")),
    })
    return model.eval(), info


def resolve_data_config(args: argparse.Namespace, info: Dict[str, Any]) -> Dict[str, Any]:
    """The evaluation transform: the checkpoint's (or the model's), overridden by the flags."""
    base = dict(info.get("data_config") or {})
    size = args.img_size or (base.get("input_size") or (3, 224, 224))[-1]
    return {
        "img_size": int(size),
        "crop_pct": args.crop_pct if args.crop_pct is not None else base.get("crop_pct", 0.875),
        "interpolation": args.interpolation or base.get("interpolation", "bicubic"),
        "mean": tuple(args.mean or base.get("mean") or (0.485, 0.456, 0.406)),
        "std": tuple(args.std or base.get("std") or (0.229, 0.224, 0.225)),
    }


def build_loaders(args: argparse.Namespace, data_config: Dict[str, Any]):
    """``(train_loader, val_loader, classes)``: the evaluation transform on both splits, in file
    order, every image once; the two splits must have the same class folders."""
    from .data import ImageFolderDataset, build_eval_transform, check_same_classes, find_classes

    root = Path(args.data_dir)
    train_root, val_root = root / args.train_split, root / args.val_split
    classes = find_classes(train_root)
    check_same_classes(classes, find_classes(val_root), train_root, val_root)
    tf = build_eval_transform(data_config["img_size"], data_config["crop_pct"], data_config["interpolation"],
                              data_config["mean"], data_config["std"])
    threads = min(8, os.cpu_count() or 1)
    train_set = ImageFolderDataset(train_root, tf, classes, cache=args.dataset_cache, max_per_class=args.max_per_class,
                                   cache_threads=threads)
    val_set = ImageFolderDataset(val_root, tf, classes, cache=args.dataset_cache, max_per_class=args.val_max_per_class,
                                 cache_threads=threads)
    kw = dict(batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    return torch.utils.data.DataLoader(train_set, **kw), torch.utils.data.DataLoader(val_set, **kw), classes


@torch.no_grad()
def extract_features(model: nn.Module, loader, device: torch.device,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, D) float32 on the CPU, labels (N,) int64)`` of every image of ``loader``, in
    its order; ``model`` maps ``(B, 3, H, W) -> (B, D)``."""
    from tqdm import tqdm

    model.eval().to(device)
    feats, labels = [], []
    for images, target in tqdm(loader, desc=desc, leave=False, mininterval=5, dynamic_ncols=True):
        out = model(images.to(device, non_blocking=True))
        if out.ndim != 2:
            raise ValueError(f"the backbone returns features of shape {tuple(out.shape)}, expected (batch, dim) "
                             "(built with num_classes=0?)")
        feats.append(out.float().cpu())
        labels.append(target)
    return torch.cat(feats), torch.cat(labels).long()


def _file_stamp(path: Optional[str]) -> Optional[Dict[str, Any]]:
    if not path:
        return None
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def image_files_stamp(root: Path, classes, max_per_class: Optional[int]) -> Dict[str, Any]:
    """The images a split's features are made of, as the dataset lists them (class, file name,
    size, modification time): their count and a digest. One directory walk and one ``stat`` per
    file; no image is read."""
    from .data import ImageFolderDataset

    digest = hashlib.sha256()
    samples = ImageFolderDataset(root, None, classes, max_per_class=max_per_class).samples
    for path, label in samples:
        st = os.stat(path)
        digest.update(f"{label}\t{Path(path).relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return {"images": len(samples), "sha256": digest.hexdigest()}


def features_key(args: argparse.Namespace) -> Dict[str, Any]:
    """What the features of ``args`` depend on, for ``--features-cache``: the backbone's flags and
    files (path, size, modification time), the data folder, splits and subsets, the image files
    of each split (:func:`image_files_stamp`: an image added, removed or rewritten makes another
    key), and the transform flags. Thread count, batch size and device do not change them, and
    are not in it."""
    from .data import find_classes

    root = Path(args.data_dir)
    classes = find_classes(root / args.train_split)
    return {
        "train_files": image_files_stamp(root / args.train_split, classes, args.max_per_class),
        "val_files": image_files_stamp(root / args.val_split, classes, args.val_max_per_class),
        "checkpoint": _file_stamp(args.checkpoint), "weights": _file_stamp(args.weights), "model": args.model,
        "pretrained": bool(args.pretrained), "random_init": bool(args.random_init),
        "seed": args.seed if args.random_init else None, "model_kwargs": dict(args.model_kwargs or {}),
        "use_ema": bool(args.use_ema), "data_dir": str(Path(args.data_dir).resolve()), "train_split": args.train_split,
        "val_split": args.val_split, "max_per_class": args.max_per_class, "val_max_per_class": args.val_max_per_class,
        "img_size": args.img_size, "crop_pct": args.crop_pct, "interpolation": args.interpolation,
        "mean": list(args.mean) if args.mean else None, "std": list(args.std) if args.std else None,
    }


def load_cached_features(path: str | Path, key: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The features kept in ``path`` if they were made with ``key``, else None (no file, another
    backbone or data, or a file that is not a features cache: each logged)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file is replaced, not trusted
        _logger.warning("--features-cache %s: not readable as a features cache (%s); extracting again", path, err)
        return None
    if not isinstance(kept, dict) or kept.get("key") != key:
        changed = sorted(k for k in key if not isinstance(kept, dict) or (kept.get("key") or {}).get(k) != key[k])
        _logger.info("--features-cache %s was made from another %s; extracting again", path,
                     ", ".join(changed) or "format")
        return None
    features = kept["features"]
    features["train"], features["val"] = tuple(features["train"]), tuple(features["val"])
    features["cached_in"] = str(path)
    return features


def features_for(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything an evaluation needs: the backbone's train and val features and labels, the
    classes, the description of the backbone and the transform, and the extraction time (of
    the extraction that made them, when they come from ``--features-cache``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cache, key = getattr(args, "features_cache", None), None
    if cache:
        key = features_key(args)
        features = load_cached_features(cache, key)
        if features is not None:
            print(f"features of {features['train'][0].shape[0]} train / {features['val'][0].shape[0]} val images "
                  f"from {cache}")
            return features
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, info = load_backbone(args)
    data_config = resolve_data_config(args, info)
    train_loader, val_loader, classes = build_loaders(args, data_config)
    start = time.perf_counter()
    train_x, train_y = extract_features(model, train_loader, device, "train features")
    val_x, val_y = extract_features(model, val_loader, device, "val features")
    features = {
        "train": (train_x, train_y),
        "val": (val_x, val_y),
        "classes": classes,
        "backbone": {k: v for k, v in info.items()},
        "data_config": data_config,
        "extract_seconds": time.perf_counter() - start,
        "device": str(device),
    }
    if cache:
        safe_io.save_atomic({"key": key, "features": features}, cache)  # a reader never sees half a file
    return features


def write_report(out: str | Path, report: Dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``OUT.json`` and ``OUT.md`` (``out`` without or with either suffix), written atomically."""
    import json

    out = Path(out)
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    json_path, md_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    safe_io.write_text_atomic(json_path, json.dumps(report, indent=2, default=_jsonable) + "\n")
    safe_io.write_text_atomic(md_path, markdown)
    return json_path, md_path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def describe(info: Dict[str, Any]) -> str:
    """One line: kind, model and its size, source."""
    kw = {k: v for k, v in (info.get("model_kwargs") or {}).items()
          if k not in ("num_classes", "drop_path_rate", "drop_rate")}
    return f"{info.get('kind')} {info.get('model_name')} {kw} ({info.get('source')})"


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """``{"top1": %, "top5": %}`` of ``scores (n, C)`` against ``labels (n,)``, through
    ``timm.utils.accuracy`` (the DeiT engine's; a ``k`` above ``C`` counts as ``C``)."""
    return {f"top{k}": float(a) for k, a in zip(ks, accuracy(scores, labels, topk=tuple(ks)))}


__all__ = [
    "add_backbone_arguments",
    "check_backbone_arguments",
    "load_backbone",
    "resolve_data_config",
    "build_loaders",
    "extract_features",
    "features_key",
    "load_cached_features",
    "features_for",
    "write_report",
    "describe",
    "topk_accuracy",
]


def report_header(evaluation: str, features: dict, args) -> dict:
    """The first entries of a ``vision.knn`` / ``vision.linear`` report: what was evaluated, the
    backbone, the data (folder, splits, images, classes, transform) and the feature size."""
    return {
        "evaluation": evaluation,
        "backbone": features["backbone"],
        "data": {"dir": args.data_dir, "train_split": args.train_split, "val_split": args.val_split,
                 "train_images": int(features["train"][1].numel()), "val_images": int(features["val"][1].numel()),
                 "classes": len(features["classes"]), "transform": features["data_config"]},
        "feature_dim": int(features["train"][0].shape[1]),
    }


def features_or_error(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """:func:`features_for` for a command line: a bad input (a missing file, a checkpoint of
    another model) is printed as one ``error:`` line and None is returned."""
    from .data import error_line

    try:
        return features_for(args)
    except (ValueError, FileNotFoundError) as err:  # BadImageError is a ValueError
        print(f"error: {error_line(err)}", file=sys.stderr)
        return None
