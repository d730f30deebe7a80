"""Training checkpoints: atomic writes, safe loading, and models rebuilt from a checkpoint.

A checkpoint of ``python -m vision.train`` is a ``torch.save`` dict of plain data (no
pickled code, so ``torch.load(weights_only=True)`` reads it):

=================  ==========================================================================
``model``          model state dict (timm names)
``model_ema``      EMA state dict, when EMA is on (timm's ``load_state_dict`` prefers it, as for
                   DeiT checkpoints)
``model_name``     timm model name; ``model_kwargs``: the ``create_model`` keyword arguments
``classes``        class folder names, in label order
``data_config``    ``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``
``epoch``          last completed epoch (0-based); ``num_updates``: optimizer steps so far
``optimizer``,     state dicts for ``--resume``
``scheduler``,
``scaler``
``rng``            torch / CUDA / Python / NumPy generator states at the end of ``epoch``
``args``           the training arguments (a dict)
``metrics``        the evaluation of ``epoch``
=================  ==========================================================================

Such a file also loads the timm way:
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH, num_classes=K), num_classes=K, **model_kwargs)``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

FORMAT = "vision-resmlp-checkpoint/1"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash mid-write
    leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | Path) -> Dict[str, Any]:
    """Read a checkpoint without unpickling code (``weights_only=True``); clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or a pickle that needs code
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def is_training_checkpoint(obj: Dict[str, Any]) -> bool:
    return obj.get("format") == FORMAT


def state_dict_of(obj: Dict[str, Any], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The weights in a checkpoint dict: a training checkpoint (``model`` / ``model_ema``), a
    DeiT-style ``{"model": ...}``, a ``{"state_dict": ...}`` or a bare state dict."""
    if use_ema:
        for key in ("model_ema", "state_dict_ema"):
            if obj.get(key) is not None:
                return obj[key]
        raise ValueError("the checkpoint has no EMA weights (trained without --model-ema)")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def create_model_from_checkpoint(path: str | Path, use_ema: bool = False, **overrides) -> tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model a training checkpoint was made with and load its weights.

    Returns ``(model, checkpoint)``; the model is in eval mode on the CPU.
    """
    import timm

    ckpt = load(path)
    if not is_training_checkpoint(ckpt):
        raise ValueError(
            f"{path} is not a checkpoint of vision.train (no model name in it); "
            "give the model name too (e.g. --teacher-model NAME --teacher-path FILE)"
        )
    kwargs = {**ckpt["model_kwargs"], **overrides}
    model = timm.create_model(ckpt["model_name"], **kwargs)
    load_weights(model, state_dict_of(ckpt, use_ema), what=f"checkpoint {path}")
    return model.eval(), ckpt


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` strictly, through the model's checkpoint mapping when it
    has one (ResMLP: DeiT or timm format), listing every key that does not fit."""
    from timm.models import clean_state_dict

    from .resmlp import ResMLP, check_state_dict_matches, timm_resmlp_filter_fn

    state_dict = clean_state_dict(state_dict)  # drops DDP / torch.compile prefixes
    if isinstance(model, ResMLP):
        state_dict = timm_resmlp_filter_fn(state_dict, model)  # DeiT -> timm names (no-op for timm)
    check_state_dict_matches(state_dict, model, what=what)
    expected = model.state_dict()
    mismatched = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if mismatched:
        raise ValueError(
            f"the {what} does not fit the model: "
            + ", ".join(f"{k}: {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched)
        )
    model.load_state_dict(state_dict, strict=True)


# --------------------------------------------------------------------------------------
# Random generator states (plain tensors and numbers, loadable with weights_only=True)
# --------------------------------------------------------------------------------------


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


def latest(output_dir: str | Path) -> Optional[Path]:
    """``output_dir/last.pth`` if it exists (for ``--resume auto``)."""
    path = Path(output_dir) / "last.pth"
    return path if path.is_file() else None
