"""Render the learned cross-patch matrices of a ResMLP (the paper's Fig. 2 / B.1) to PNG.

    python -m vision.plot --checkpoint runs/c10/best.pth --out results/vision_cifar10_cross_patch.png
    python -m vision.plot --checkpoint runs/c10/best.pth --label supervised --checkpoint runs/dino/last.pth \
        --label DINO --out results/dino_cifar10_cross_patch.png
    python -m vision.plot --checkpoint runs/c10/best.pth --montage --out montage.png

Row ``i`` of a block's ``N x N`` matrix ``A`` is what patch ``i`` reads: the weight it gives to
every patch of the image. The default figure (the paper's Fig. 2) shows, for a few blocks (rows
of the figure) and a few chosen patches (columns: the centre, a corner, the middle of an edge by
default; ``--patches``), row ``i`` reshaped to the ``h x w`` patch grid, the patch itself
outlined. Early blocks look like convolutions (a spot on and around the patch), later ones
spread out. Several ``--checkpoint`` / ``--label`` pairs are drawn side by side (supervised vs
DINO), each under a title giving the model's true size (depth, width, patch, patch grid, image
size, parameters). ``--montage`` draws instead, for every block, all ``N`` rows tiled by patch
position.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from timm.utils import ParseKwargs


def cross_patch_montage(weight: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """``weight (N, N)`` with ``N = h * w`` -> a ``(h * h, w * w)`` image: tile ``(r, c)`` is row
    ``r * w + c`` reshaped to ``(h, w)``."""
    h, w = grid
    n = h * w
    if weight.shape != (n, n):
        raise ValueError(f"cross-patch weight of shape {tuple(weight.shape)} does not fit a {h}x{w} patch grid")
    rows = weight.detach().float().cpu().reshape(h, w, h, w)  # (r, c, i, j): weight of patch (i, j) for patch (r, c)
    return rows.permute(0, 2, 1, 3).reshape(h * h, w * w).numpy()


def plot_cross_patch(model: torch.nn.Module, out: str | Path, blocks: Sequence[int] | None = None, cols: int = 6,
                     title: str = "") -> Path:
    """Write the montages of ``model.blocks[i].linear_tokens.weight`` for ``i`` in ``blocks`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = tuple(model.stem.grid_size)
    blocks = list(range(len(model.blocks))) if not blocks else list(blocks)
    cols = min(cols, len(blocks))
    nrows = (len(blocks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.6 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, blocks):
        img = cross_patch_montage(model.blocks[i].linear_tokens.weight, grid)
        lim = np.abs(img).max() or 1.0
        ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        h, w = grid
        for k in range(1, h):  # thin lines between tiles
            ax.axhline(k * h - 0.5, color="0.85", lw=0.3)
        for k in range(1, w):
            ax.axvline(k * w - 0.5, color="0.85", lw=0.3)
        ax.set_title(f"block {i}", fontsize=9)
    fig.suptitle(title or f"cross-patch matrices A: row i reshaped to the {grid[0]}x{grid[1]} patch grid", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def model_size(model: torch.nn.Module) -> str:
    """``depth 8, width 96, patch 4, 8x8 patches, 32 px, 0.64M params``: what a ResMLP is."""
    h, w = model.stem.grid_size
    img = model.stem.img_size
    patch = model.stem.patch_size
    params = sum(p.numel() for p in model.parameters())
    return (f"depth {len(model.blocks)}, width {model.embed_dim}, patch {patch[0]}, {h}x{w} patches, "
            f"{img[0]} px, {params / 1e6:.2f}M params")


def default_patches(grid: tuple[int, int]) -> list[int]:
    """The centre patch, the top-left corner and the middle of the left edge (row-major indices)."""
    h, w = grid
    chosen = [(h // 2) * w + w // 2, 0, (h // 2) * w]
    return list(dict.fromkeys(chosen))


def default_blocks(depth: int, count: int = 4) -> list[int]:
    """``count`` blocks evenly spread from the first to the last."""
    if depth <= count:
        return list(range(depth))
    return sorted({round(i * (depth - 1) / (count - 1)) for i in range(count)})


def cross_patch_row(weight: torch.Tensor, grid: tuple[int, int], patch: int) -> np.ndarray:
    """Row ``patch`` of ``weight (N, N)`` reshaped to the ``(h, w)`` patch grid: entry ``(r, c)`` is
    the weight patch ``patch`` gives to the patch at ``(r, c)``."""
    h, w = grid
    if weight.shape != (h * w, h * w):
        raise ValueError(f"cross-patch weight of shape {tuple(weight.shape)} does not fit a {h}x{w} patch grid")
    if not 0 <= patch < h * w:
        raise ValueError(f"patch {patch} is outside the {h}x{w} grid (0..{h * w - 1})")
    return weight[patch].detach().float().cpu().reshape(h, w).numpy()


def plot_cross_patch_rows(
    models: Sequence[tuple[str, torch.nn.Module]],
    out: str | Path,
    blocks: Sequence[int] | None = None,
    patches: Sequence[int] | None = None,
    title: str = "",
) -> Path:
    """The paper's figure for each ``(label, model)``, side by side: a row of the figure per block,
    a column per chosen patch; every image is :func:`cross_patch_row`, on a symmetric colour
    scale per image, with the patch itself outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not models:
        raise ValueError("no model to plot")
    n_rows = max(len(blocks) if blocks else len(default_blocks(len(m.blocks))) for _, m in models)
    n_cols = max(len(patches) if patches else len(default_patches(tuple(m.stem.grid_size))) for _, m in models)
    fig = plt.figure(figsize=(1.9 * n_cols * len(models) + 0.6, 1.9 * n_rows + 1.2))
    subfigs = np.atleast_1d(fig.subfigures(1, len(models), wspace=0.04))
    for subfig, (label, model) in zip(subfigs, models):
        grid = tuple(model.stem.grid_size)
        model_blocks = list(blocks) if blocks else default_blocks(len(model.blocks))
        bad = [b for b in model_blocks if not 0 <= b < len(model.blocks)]
        if bad:
            raise ValueError(f"blocks {bad}: {label} has blocks 0..{len(model.blocks) - 1}")
        model_patches = list(patches) if patches else default_patches(grid)
        axes = subfig.subplots(n_rows, n_cols, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for r, b in enumerate(model_blocks):
            weight = model.blocks[b].linear_tokens.weight
            for c, patch in enumerate(model_patches):
                img = cross_patch_row(weight, grid, patch)
                lim = float(np.abs(img).max()) or 1.0
                ax = axes[r, c]
                ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
                pr, pc = divmod(patch, grid[1])
                ax.add_patch(Rectangle((pc - 0.5, pr - 0.5), 1, 1, fill=False, edgecolor="k", lw=0.8))
                if r == 0:
                    ax.set_title(f"patch ({pr},{pc})", fontsize=8)
                if c == 0:
                    ax.text(-0.12, 0.5, f"block {b}", transform=ax.transAxes, rotation=90, va="center", ha="right",
                            fontsize=8)
        subfig.suptitle(f"{label}\n{model_size(model)}", fontsize=9)
    if title:
        fig.text(0.5, 0.005, title, ha="center", va="bottom", fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _load_model(args, checkpoint: str | None, parser) -> tuple[torch.nn.Module, str]:
    from . import checkpoint as ckpt_io

    if checkpoint:
        if not Path(checkpoint).is_file():
            parser.error(f"--checkpoint {checkpoint}: no such file")
        model, ckpt = ckpt_io.create_model_from_checkpoint(checkpoint, use_ema=args.use_ema)
        kind = "DINO teacher" if ckpt.get("format") == ckpt_io.DINO_FORMAT else "supervised"
        return model, f"{ckpt['model_name']} ({kind}, {Path(checkpoint).name}, epoch {ckpt.get('epoch')})"
    import timm

    if not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights}: no such file")
    kwargs = dict(args.model_kwargs)
    model = timm.create_model(args.model, **kwargs)
    ckpt_io.load_initial_weights(model, ckpt_io.load_state_dict(args.weights, args.use_ema),
                                 what=f"weights {args.weights}")
    return model, f"{args.model} ({Path(args.weights).name})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vision.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[],
                   help="a vision.train or vision.dino checkpoint; repeat to compare models")
    p.add_argument("--label", action="append", default=[],
                   help="a title for each --checkpoint, in order (default: its model and file)")
    p.add_argument("--model", help="or: a ResMLP model name, with --weights (timm, DeiT or DINO format)")
    p.add_argument("--weights", help="weights file for --model")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs,
                   help="create_model arguments for --model, key=value")
    p.add_argument("--use-ema", action="store_true", help="plot the EMA weights of a vision.train checkpoint")
    p.add_argument("--blocks", type=int, nargs="*", default=None,
                   help="block indices (default: 4 spread over the depth; --montage: all)")
    p.add_argument("--patches", type=int, nargs="*", default=None,
                   help="row-major patch indices (default: centre, corner, edge)")
    p.add_argument("--montage", action="store_true",
                   help="every row of A, tiled by patch position, for each block (one model)")
    p.add_argument("--cols", type=int, default=6, help="--montage: blocks per figure row")
    p.add_argument("--out", required=True, help="PNG file to write")
    args = p.parse_args(argv)

    from .resmlp import ResMLP

    if args.model and args.weights:
        entries = [_load_model(args, None, p)]
    elif args.checkpoint:
        entries = [_load_model(args, c, p) for c in args.checkpoint]
    else:
        p.error("give --checkpoint (one or more), or --model with --weights")
    if args.label:
        if len(args.label) != len(entries):
            p.error(f"{len(args.label)} --label for {len(entries)} model(s): give one per --checkpoint")
        entries = [(m, label) for (m, _), label in zip(entries, args.label)]
    for model, name in entries:
        if not isinstance(model, ResMLP):
            p.error(f"{name}: {type(model).__name__} is not a ResMLP: it has no cross-patch layers")
        bad = [i for i in (args.blocks or []) if not 0 <= i < len(model.blocks)]
        if bad:
            p.error(f"--blocks {bad}: {name} has blocks 0..{len(model.blocks) - 1}")
        n = model.num_tokens
        bad = [i for i in (args.patches or []) if not 0 <= i < n]
        if bad:
            p.error(f"--patches {bad}: {name} has patches 0..{n - 1}")
    if args.montage:
        if len(entries) != 1:
            p.error("--montage draws one model")
        model, name = entries[0]
        out = plot_cross_patch(model, args.out, args.blocks, args.cols,
                               f"{name}: {model_size(model)}: every row of A on the patch grid")
    else:
        out = plot_cross_patch_rows([(name, model) for model, name in entries], args.out, args.blocks, args.patches,
                                    "row i of A reshaped to the patch grid: "
                                    "the weights patch i (outlined) gives every patch")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
