#!/usr/bin/env python
"""Render the learned token-mixing weights of a ResMLP translation model to one PNG (the paper's
matrices A, or the mixing weights of a token-mixer variant, per head).

    python -m benchmarks.plot_mt_mixing checkpoints/multi30k.en-de.resmlp/checkpoint_best.pt \\
        results/mt_token_mixing_en-de.png --positions 40

One row of panels for the encoder, one for the decoder, one panel per layer (a mixer with heads:
one row per layer, one panel per head, at most 4): ``A[:P, :P]``
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


def _options(args) -> dict:
    """The token-mixer options of a checkpoint's model configuration (the paper's by default)."""
    get = (lambda k, d: args.get(k, d)) if isinstance(args, dict) else (lambda k, d: getattr(args, k, d))
    return {"heads": get("token_mixer_heads", 1), "positions": get("token_mixer_positions", "absolute"),
            "kernel": get("token_mixer_kernel", 0), "normalize": get("token_mixer_normalize", "none"),
            "gate": get("token_mixer_gate", "none"), "weights": get("token_mixer_weights", "static")}


#: heads drawn per layer of a mixer with more
SHOWN_HEADS = 4


def mixing_matrices(state: dict, positions: int, args=None, heads: int = SHOWN_HEADS):
    """``{"encoder": [(title, M), ...], "decoder": [...]}``: per layer (and per head, the first
    ``heads`` of a multi-head mixer) the ``(P, P)`` mixing weights for the first ``P`` positions,
    as the model applies them (:meth:`resmlp_core.token_mixers.TokenMixer.mixing_weights`:
    relative kernels laid out as matrices, softmax rows normalised; a dynamic mixer's static part,
    its weights at a zero input, titled so); decoder matrices with the
    unused upper triangle set to NaN. ``args``: the model configuration (the paper's mixer if None)."""
    import torch

    from resmlp_core.token_mixers import build_token_mixer

    options = _options(args or {})
    out = {"encoder": [], "decoder": []}
    for side in out:
        layer = 0
        while any(k.startswith(f"{side}.layers.{layer}.token_mixer.") for k in state):
            prefix = f"{side}.layers.{layer}.token_mixer."
            own = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
            bias = own.get("mixer.bias", own.get("bias"))
            dim = next((own[k].size(1) for k in ("in_proj.weight", "dynamic_proj.weight", "mixer.dynamic_proj.weight")
                        if k in own), 16 * options["heads"])
            mixer = build_token_mixer(bias.numel(), dim, causal=side == "decoder", **options)
            mixer.load_state_dict(own)
            inner = getattr(mixer, "mixer", mixer)
            n = min(positions, bias.numel())
            with torch.no_grad():
                if hasattr(inner, "mixing_weights"):
                    grid = torch.arange(n)
                    weights = inner.mixing_weights(grid, grid)  # (H, P, P)
                else:  # the paper's CrossTokenLinear
                    weights = inner.matrix(n)[None]
            for h in range(min(heads, weights.size(0))):
                a = weights[h].detach().numpy().copy()
                if side == "decoder":
                    a[np.triu_indices_from(a, k=1)] = np.nan
                title = f"{side} layer {layer}" + (f" head {h}" if weights.size(0) > 1 else "")
                notes = [n for n, shown in (("static part", getattr(inner, "dynamic", False)),
                                             ("causal", side == "decoder")) if shown]
                out[side].append((title + (f" ({', '.join(notes)})" if notes else ""), a))
            layer += 1
    if not out["encoder"]:
        raise ValueError("no token mixers (encoder.layers.N.token_mixer.*) in this checkpoint: "
                         "not a ResMLP translation model")
    return out


def panel_rows(matrices: dict, heads: int, shown_heads: int = SHOWN_HEADS) -> list:
    """The figure's rows of ``(title, matrix)`` panels: one row per side (its layers) for a one-head
    mixer; one row per layer (its first ``shown_heads`` heads) for a mixer with heads."""
    per_layer = min(heads, shown_heads)
    if per_layer == 1:
        return list(matrices.values())
    return [mats[i:i + per_layer] for mats in matrices.values() for i in range(0, len(mats), per_layer)]


def plot(checkpoint: Path, out: Path, positions: int = 40, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import resmlp_mt  # noqa: F401  (allows fairseq's Namespace in weights-only loading)

    state = read_checkpoint(checkpoint)
    args = state["cfg"]["model"] if state.get("cfg") else state.get("args")
    rows = panel_rows(mixing_matrices(state["model"], positions, args), _options(args or {})["heads"])
    cols = max(len(m) for m in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.8 * cols, 3.0 * len(rows)), squeeze=False)
    for row, mats in enumerate(rows):
        for col in range(cols):
            ax = axes[row, col]
            if col >= len(mats):
                ax.axis("off")
                continue
            name, matrix = mats[col]
            lim = float(np.nanmax(np.abs(matrix))) or 1.0
            image = ax.imshow(matrix, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(name.replace(" (", "\n("), fontsize=9)  # the notes on a line of their own
            ax.set_xlabel("read position j", fontsize=8)
            ax.set_ylabel("position i", fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    updates = state.get("optimizer_history", [{}])[-1].get("num_updates", "?")
    options = ", ".join(f"{k} {v}" for k, v in _options(args or {}).items() if v not in (1, "absolute", 0, "none"))
    fig.suptitle(title or f"token-mixing weights [:{positions}, :{positions}] of {getattr(args, 'arch', '?')}"
                          f"{' (' + options + ')' if options else ''} "
                          f"({checkpoint.name}, {updates} updates)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path,
                   help="a ResMLP translation checkpoint (fairseq) or model.pt of a model folder")
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
