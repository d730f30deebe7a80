#!/usr/bin/env python
"""Render the learned token-mixing matrices A of a ResMLP translation model to one PNG.

    python -m benchmarks.plot_mt_mixing checkpoints/multi30k.en-de.resmlp/checkpoint_best.pt \\
        results/mt_token_mixing_en-de.png --positions 40

One row of panels for the encoder, one for the decoder, one panel per layer: ``A[:P, :P]``
for the first ``P`` positions (``--positions``; Multi30k sentences are rarely longer than 40
pieces). Entry ``(i, j)`` is the weight with which position ``i`` reads position ``j``; the
decoder's matrices are lower-triangular (causal), the upper triangle is never used and is left
blank. Colours are symmetric around zero, one scale per panel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import read_checkpoint


def mixing_matrices(state: dict, positions: int):
    """``{"encoder": [A_0, ...], "decoder": [...]}`` as ``(P, P)`` arrays from a checkpoint's
    ``model`` state dict; decoder matrices with the unused upper triangle set to NaN."""
    out = {"encoder": [], "decoder": []}
    for side in out:
        layer = 0
        while f"{side}.layers.{layer}.token_mixer.weight" in state:
            a = state[f"{side}.layers.{layer}.token_mixer.weight"].float()[:positions, :positions].numpy().copy()
            if side == "decoder":
                a[np.triu_indices_from(a, k=1)] = np.nan
            out[side].append(a)
            layer += 1
    if not out["encoder"]:
        raise ValueError("no token-mixing matrices (encoder.layers.N.token_mixer.weight) in this checkpoint: not a ResMLP translation model")
    return out


def plot(checkpoint: Path, out: Path, positions: int = 40, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import resmlp_mt  # noqa: F401  (allows fairseq's Namespace in weights-only loading)

    state = read_checkpoint(checkpoint)
    matrices = mixing_matrices(state["model"], positions)
    cols = max(len(m) for m in matrices.values())
    fig, axes = plt.subplots(2, cols, figsize=(2.8 * cols, 6.0), squeeze=False)
    for row, (side, mats) in enumerate(matrices.items()):
        for col in range(cols):
            ax = axes[row, col]
            if col >= len(mats):
                ax.axis("off")
                continue
            lim = float(np.nanmax(np.abs(mats[col]))) or 1.0
            image = ax.imshow(mats[col], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(f"{side} layer {col}" + (" (causal)" if side == "decoder" else ""), fontsize=9)
            ax.set_xlabel("read position j", fontsize=8)
            ax.set_ylabel("position i", fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    args = state["cfg"]["model"] if state.get("cfg") else state.get("args")
    updates = state.get("optimizer_history", [{}])[-1].get("num_updates", "?")
    fig.suptitle(title or f"token-mixing matrices A[:{positions}, :{positions}] of {getattr(args, 'arch', '?')} "
                          f"({checkpoint.name}, {updates} updates)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a ResMLP translation checkpoint (fairseq) or model.pt of a model folder")
    p.add_argument("out", type=Path, help="PNG file to write")
    p.add_argument("--positions", type=int, default=40, help="how many positions to show (default 40)")
    p.add_argument("--title", help="figure title")
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        p.error(f"checkpoint not found: {args.checkpoint}")
    try:
        print(f"wrote {plot(args.checkpoint, args.out, args.positions, args.title)}")
    except ValueError as e:
        print(f"error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
