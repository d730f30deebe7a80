"""The training recipes of the Multi30k races: scripts/train_multi30k.sh (Adam, inverse-sqrt
schedule, label smoothing 0.1, dropout 0.1, 2048 tokens) with the few settings the sweep of
``python -m benchmarks.race_mt`` tunes per system: the learning rate, the warm-up, and ResMLP's LayerScale
init or the Transformer's pre- or post-norm.

A recipe is a dict: ``{"lr", "warmup", "layerscale_init"}`` (ResMLP) or ``{"lr", "warmup",
"norm"}`` (Transformer). :func:`recipe_flags` turns one into fairseq-train flags and the
environment of scripts/train_multi30k.sh; :func:`tuned_recipes` reads the sweep's best.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

SYSTEMS = ("resmlp", "transformer")
# scripts/train_multi30k.sh's recipe: used when no sweep was run
DEFAULT_RECIPES = {
    "resmlp": {"lr": 2e-3, "warmup": 400, "layerscale_init": 0.5},
    "transformer": {"lr": 2e-3, "warmup": 400, "norm": "pre"},
}


def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


def recipe_name(system: str, recipe: dict) -> str:
    tail = f"ls{recipe['layerscale_init']:g}" if system == "resmlp" else recipe["norm"]
    return f"{system}.lr{fmt_lr(recipe['lr'])}.wu{recipe['warmup']}.{tail}"


def recipe_text(system: str, recipe: dict) -> str:
    tail = f"LayerScale init {recipe['layerscale_init']:g}" if system == "resmlp" else f"{recipe['norm']}-norm"
    return f"lr {fmt_lr(recipe['lr'])}, warm-up {recipe['warmup']}, {tail}"


def recipe_flags(system: str, recipe: dict):
    """fairseq-train flags and environment of a recipe for scripts/train_multi30k.sh."""
    flags = ["--lr", fmt_lr(recipe["lr"]), "--warmup-updates", str(recipe["warmup"])]
    env = {}
    if system == "resmlp":
        flags += ["--layerscale-init", f"{recipe['layerscale_init']:g}"]
    else:
        env["TRANSFORMER_NORM"] = recipe["norm"]
    return flags, env


def tuned_recipes(sweep_json: Path, quick: bool = False) -> Tuple[Dict[str, dict], str]:
    """``(recipe per system, where it comes from)``: the best of the sweep in ``sweep_json``
    (results/mt_sweep.json) when it was made in the same ``quick`` mode, else
    :data:`DEFAULT_RECIPES`, which the text says (the Transformer is then not tuned)."""
    try:
        sweep = json.loads(Path(sweep_json).read_text())
    except (OSError, json.JSONDecodeError):
        sweep = None
    if sweep and "best" in sweep and sweep["settings"].get("quick") == quick:
        return (
            {s: sweep["best"][s]["recipe"] for s in SYSTEMS},
            f"best of the sweep ({sweep_json}: {sweep['settings']['updates']} updates on "
            f"{sweep['settings']['pair']}, valid sacreBLEU)",
        )
    why = "no sweep results found" if not sweep else "the sweep results found were made in another --quick mode"
    return dict(DEFAULT_RECIPES), f"default recipe of scripts/train_multi30k.sh ({why}: the Transformer is NOT tuned)"
