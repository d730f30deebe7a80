"""Reading weight files, below the model: what a vision checkpoint or weights file is and its
safe loading (weights only, no code unpickled), with an error naming the file when it is not
one. :mod:`vision.resmlp` (``checkpoint_filter_fn``, timm's ``pretrained_cfg_overlay`` files) and
:mod:`vision.checkpoint` (run outputs, models rebuilt from a checkpoint) read through it; the
formats are described in :mod:`vision.checkpoint`.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Optional

import torch

FORMAT = "vision-resmlp-checkpoint/1"
DINO_FORMAT = "vision-dino-checkpoint/1"



#: What a weights file given to vision (or to ``timm.create_model`` for a ResMLP) must be.
EXPECTED = (
    "expected a PyTorch checkpoint written by torch.save: a state dict of a ResMLP model "
    "(parameter name -> tensor), a {'model': state_dict} / {'state_dict': state_dict} dict "
    "(DeiT, timm) or a vision.train checkpoint"
)

# The first bytes of a file written by torch.save(..., _use_new_zipfile_serialization=False):
# the pickled magic number.
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def _file_kind(path: Path) -> str:
    """``"zip"`` (torch.save's format), ``"legacy"`` (torch.save before 1.6), ``"safetensors"``
    or a description of what else the file looks like (for error messages)."""
    if path.suffix == ".safetensors":
        return "safetensors"
    with open(path, "rb") as fh:
        head = fh.read(64)
    if zipfile.is_zipfile(path):
        return "zip"
    if head.startswith(_LEGACY_MAGIC):
        return "legacy"
    if head.startswith(b"PK\x03\x04"):
        return "a damaged or truncated zip archive (torch.save's format)"
    if not head:
        return "an empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"a text file starting with {text[:32]!r}"
    return f"a binary file starting with {head[:16]!r}"


def _not_a_checkpoint(path: Path, detail: str) -> ValueError:
    return ValueError(f"cannot read checkpoint {path}: {detail}; {EXPECTED}")


def load(path: str | Path, mmap: bool = False) -> Dict[str, Any]:
    """Read a checkpoint without unpickling code (``weights_only=True``); clear errors.

    ``ValueError`` (naming the file and what was expected) for anything that is not a dict
    saved by ``torch.save`` (or a ``.safetensors`` file); ``FileNotFoundError`` for a missing
    file. ``mmap=True`` maps the tensors instead of reading them (zip-format files; cheap for
    reading metadata such as the epoch).
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a directory, not a file ({EXPECTED})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        kind = _file_kind(path)
    except OSError as err:
        raise _not_a_checkpoint(path, f"cannot open it ({err})") from err
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        except Exception as err:
            raise _not_a_checkpoint(path, f"not a readable safetensors file ({type(err).__name__}: {err})") from err
    if kind not in ("zip", "legacy"):
        raise _not_a_checkpoint(path, f"not a PyTorch checkpoint, it is {kind}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and kind == "zip")
    except Exception as err:  # corrupt file, or a pickle that needs code
        from resmlp_core.checkpoint import weights_only_refusal

        refusal = weights_only_refusal(err, path)
        if refusal is not None:  # without torch's advice to load it unsafely
            raise ValueError(f"cannot read checkpoint {refusal}; {EXPECTED}") from None
        detail = f"{type(err).__name__}: {err}" if str(err) else f"{type(err).__name__} (truncated or damaged file?)"
        raise _not_a_checkpoint(path, detail) from err
    if not isinstance(obj, dict):
        raise _not_a_checkpoint(path, f"it holds a {type(obj).__name__}, not a dict")
    return obj


def check_state_dict(state_dict: Any, what: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """``state_dict`` if it is a non-empty mapping of names to tensors, else ``ValueError``
    saying what was found instead."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"the {what} holds a {type(state_dict).__name__}, not a state dict; {EXPECTED}")
    if not state_dict:
        raise ValueError(f"the {what} holds an empty state dict; {EXPECTED}")
    bad = [(k, v) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        shown = (", ".join(f"{k!r}: {type(v).__name__}" for k, v in bad[:5])
                 + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
        raise ValueError(
            f"the {what} is not a state dict: {len(bad)} of its {len(state_dict)} entries are not "
            f"parameter name -> tensor ({shown}); {EXPECTED}"
        )
    return dict(state_dict)


def dino_teacher_backbone(obj: Mapping) -> Optional[Dict[str, torch.Tensor]]:
    """The teacher's backbone weights of a DINO checkpoint (ours, ``DINO_FORMAT``, or
    facebookresearch/dino's ``checkpoint.pth``: ``teacher`` with ``[module.]backbone.*`` keys),
    with those prefixes removed and the DINO head left out; ``None`` for any other dict."""
    teacher = obj.get("teacher") if isinstance(obj, Mapping) else None
    if not isinstance(teacher, Mapping):
        return None
    out = {}
    for key, value in teacher.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("backbone."):
            out[key[len("backbone."):]] = value
    return out or None


def check_weights_file(path: str | Path) -> None:
    """Check that ``path`` is a weights file timm can load for a ResMLP, before timm reads it:
    ``ValueError`` naming the file and what is wrong (timm's own reader gives e.g. a bare
    ``KeyError`` for a text file). Zip-format files are mapped, not read, so this is cheap."""
    path = Path(path)
    obj = load(path, mmap=True)
    teacher = dino_teacher_backbone(obj)
    if teacher is not None:
        check_state_dict(teacher, what=f"checkpoint {path} (DINO teacher backbone)")
        return
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # timm's load_state_dict order
        if obj.get(key) is not None:
            check_state_dict(obj[key], what=f"checkpoint {path} ({key!r})")
            return
    check_state_dict(obj, what=f"checkpoint {path}")


def is_training_checkpoint(obj: Dict[str, Any]) -> bool:
    return obj.get("format") == FORMAT


def is_model_checkpoint(obj: Dict[str, Any]) -> bool:
    """A checkpoint that names its model: ``vision.train`` (``FORMAT``) or ``vision.dino``
    (``DINO_FORMAT``)."""
    return obj.get("format") in (FORMAT, DINO_FORMAT)


def state_dict_of(obj: Dict[str, Any], use_ema: bool = False, what: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The weights in a checkpoint dict: a training checkpoint (``model`` / ``model_ema``), a
    DINO checkpoint (the teacher's backbone, :func:`dino_teacher_backbone`; the teacher is
    already an EMA, so ``use_ema`` changes nothing), a DeiT-style ``{"model": ...}``, a
    ``{"state_dict": ...}`` or a bare state dict. ``ValueError`` when what is found is not a
    state dict."""
    teacher = dino_teacher_backbone(obj)
    if teacher is not None:
        return check_state_dict(teacher, what=f"{what} (DINO teacher backbone)")
    if use_ema:
        for key in ("model_ema", "state_dict_ema"):
            if obj.get(key) is not None:
                return check_state_dict(obj[key], what=f"{what} ({key!r})")
        raise ValueError(f"the {what} has no EMA weights (trained without --model-ema)")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return check_state_dict(obj[key], what=f"{what} ({key!r})")
    return check_state_dict(obj, what=what)


def load_state_dict(path: str | Path, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """:func:`load` then :func:`state_dict_of`; every error names ``path``."""
    return state_dict_of(load(path), use_ema, what=f"checkpoint {path}")
