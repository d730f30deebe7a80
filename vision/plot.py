"""Render the learned cross-patch matrices of a ResMLP (the paper's Fig. 2 / B.1) to PNG.

    python -m vision.plot --checkpoint runs/c10/best.pth --out results/vision_cifar10_cross_patch.png

For every block, each row ``i`` of the ``N x N`` matrix ``A`` (the weights patch ``i``
gives to every patch) is reshaped to the ``h x w`` patch grid; the ``N`` small images are
tiled in the order of the patches, so the tile at grid position ``(r, c)`` shows what the
patch at ``(r, c)`` looks at. Early layers look like convolutions (a bright spot on and
around the tile's own position), later ones spread out.
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


def plot_cross_patch(model: torch.nn.Module, out: str | Path, blocks: Sequence[int] | None = None, cols: int = 6, title: str = "") -> Path:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vision.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a vision.train checkpoint")
    p.add_argument("--model", help="or: a ResMLP model name, with --weights (timm or DeiT format)")
    p.add_argument("--weights", help="weights file for --model")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, help="create_model arguments for --model, key=value")
    p.add_argument("--use-ema", action="store_true", help="plot the EMA weights of the checkpoint")
    p.add_argument("--blocks", type=int, nargs="*", default=None, help="block indices (default: all)")
    p.add_argument("--cols", type=int, default=6)
    p.add_argument("--out", required=True, help="PNG file to write")
    args = p.parse_args(argv)

    from . import checkpoint as ckpt_io
    from .resmlp import ResMLP

    if args.checkpoint:
        model, ckpt = ckpt_io.create_model_from_checkpoint(args.checkpoint, use_ema=args.use_ema)
        title = f"{ckpt['model_name']} ({Path(args.checkpoint).name}, epoch {ckpt['epoch']}): cross-patch matrices"
    elif args.model and args.weights:
        import timm

        model = timm.create_model(args.model, **args.model_kwargs)
        ckpt_io.load_weights(model, ckpt_io.load_state_dict(args.weights, args.use_ema), what=f"weights {args.weights}")
        title = f"{args.model} ({Path(args.weights).name}): cross-patch matrices"
    else:
        p.error("give --checkpoint, or --model with --weights")
    if not isinstance(model, ResMLP):
        p.error(f"{type(model).__name__} is not a ResMLP: it has no cross-patch layers")
    bad = [i for i in (args.blocks or []) if not 0 <= i < len(model.blocks)]
    if bad:
        p.error(f"--blocks {bad}: the model has blocks 0..{len(model.blocks) - 1}")
    out = plot_cross_patch(model, args.out, args.blocks, args.cols, title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
