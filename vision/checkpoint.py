"""Training checkpoints and their output folder, writer and reader in one place: atomic writes,
the epoch's outputs in a safe order (:func:`write_epoch`: the ``summary.csv`` row, ``last.pth``,
``best.pth``) and their repair on resume (:func:`reconcile_outputs`), and models rebuilt from a
checkpoint. Weight files are read by :mod:`vision.weights` (below the model; its readers are
importable from here too). ``vision.train`` and ``vision.dino`` write only through these
functions, which write through :mod:`resmlp_core.io`.

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
``metrics``        the evaluation of ``epoch``; ``best``: ``{"top1", "epoch"}`` of the best so far
``summary``        the ``summary.csv`` rows so far (``epoch``, ``train``, ``eval``, ``lr``), to
                   rewrite rows lost by a kill on ``--resume``
=================  ==========================================================================

A checkpoint of ``python -m vision.dino`` (format ``DINO_FORMAT``) has the same ``model_name``,
``model_kwargs`` (the backbone's, ``num_classes=0``) and ``data_config``, and ``student`` /
``teacher`` state dicts of DINO's multi-crop wrapper (``backbone.*``, ``head.*``) instead of
``model``; its weights (:func:`state_dict_of`) are the teacher's backbone, as DINO evaluates.
facebookresearch/dino's own ``checkpoint.pth`` layout (``teacher`` with ``module.backbone.*``)
is read the same way.

Such a file also loads the timm way:
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH, num_classes=K), num_classes=K,
**model_kwargs)``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from resmlp_core import io as safe_io

from .resmlp import ResMLP, check_state_dict_matches, remap_state_dict, timm_resmlp_filter_fn

from .weights import (  # noqa: F401  (the readers, here too for the callers of vision.checkpoint)
    DINO_FORMAT, EXPECTED, FORMAT, check_state_dict, check_weights_file, dino_teacher_backbone, is_model_checkpoint,
    is_training_checkpoint, load, load_state_dict, state_dict_of,
)

_logger = logging.getLogger(__name__)

#: What every vision.train checkpoint holds (format ``FORMAT``; ``vision.dino``: ``teacher`` for ``model``).
TRAINING_KEYS = ("model_name", "model_kwargs", "model", "data_config")


def create_model_from_checkpoint(path: str | Path, use_ema: bool = False,
                                  **overrides) -> tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model a training checkpoint was made with and load its weights.

    Returns ``(model, checkpoint)``; the model is in eval mode on the CPU.
    """
    import timm

    ckpt = load(path)
    if not is_model_checkpoint(ckpt):
        raise ValueError(
            f"{path} is not a checkpoint of vision.train or vision.dino (expected the format tag {FORMAT!r} or "
            f"{DINO_FORMAT!r} and the model name; found keys: {', '.join(map(str, list(ckpt)[:8]))}"
            f"{', ...' if len(ckpt) > 8 else ''}). For weights only (a state dict "
            "of a ResMLP model) give the model name too (vision.evaluate: --model NAME --weights FILE; "
            "vision.train: --teacher-model NAME --teacher-path FILE)"
        )
    required = (TRAINING_KEYS if is_training_checkpoint(ckpt)
                else ("model_name", "model_kwargs", "teacher", "data_config"))
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} says it is a {ckpt['format']} checkpoint but lacks {', '.join(missing)} "
                         "(a damaged file?)")
    kwargs = {**ckpt["model_kwargs"], **overrides}
    model = timm.create_model(ckpt["model_name"], **kwargs)
    load_weights(model, state_dict_of(ckpt, use_ema, what=f"checkpoint {path}"), what=f"checkpoint {path}")
    return model.eval(), ckpt


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` strictly, through the model's checkpoint mapping when it
    has one (ResMLP: DeiT or timm format), listing every key that does not fit."""
    from timm.models import clean_state_dict

    state_dict = clean_state_dict(check_state_dict(state_dict, what=what))  # drops DDP / torch.compile prefixes
    # a strict load: every shape is checked, the head's too
    if isinstance(model, ResMLP):
        state_dict = remap_state_dict(state_dict, model, what=what, ignore_shapes=())  # DeiT -> timm names
    else:
        check_state_dict_matches(state_dict, model, what=what, ignore_shapes=())
    model.load_state_dict(state_dict, strict=True)


def load_initial_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], what: str = "checkpoint") -> str:
    """Start a fine-tuning run from ``state_dict``: every backbone weight must fit (as
    :func:`load_weights`); the classifier is taken from the checkpoint only when it has one of
    the model's shape, otherwise the model keeps its new, freshly initialised head (a DINO
    backbone has none; a checkpoint with another number of classes has another). Returns a line
    saying which."""
    from timm.models import clean_state_dict

    state_dict = clean_state_dict(check_state_dict(state_dict, what=what))
    if isinstance(model, ResMLP):
        state_dict = timm_resmlp_filter_fn(state_dict, model)
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier", "head")
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    expected = model.state_dict()
    head_keys = [k for k in expected if k.startswith(classifier + ".")]
    found = [k for k in state_dict if k.startswith(classifier + ".")]
    fits = (bool(found) and set(found) == set(head_keys)
            and all(state_dict[k].shape == expected[k].shape for k in head_keys))
    if fits:
        load_weights(model, state_dict, what=what)
        return f"backbone and classifier ({classifier}) loaded from the {what}"
    shapes = ", ".join(f"{k} {tuple(state_dict[k].shape)}" for k in found) or "none"
    state_dict = {k: v for k, v in state_dict.items() if k not in found}
    state_dict.update({k: expected[k] for k in head_keys})  # the new head keeps its initialisation
    load_weights(model, state_dict, what=what)
    new = ", ".join(f"{k} {tuple(expected[k].shape)}" for k in head_keys) or "none"
    return f"backbone loaded from the {what}; new classifier {new} (the checkpoint's: {shapes})"


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
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


def gather_rng_state(world_size: int, distributed: bool) -> Dict[str, Any] | list[Dict[str, Any]]:
    """This process's generator states (:func:`rng_state`); in a distributed run, every rank's, in
    rank order (a collective: every rank calls it; the states differ, seeds are offset by rank)."""
    import torch.distributed as dist

    rng = rng_state()
    if not distributed:
        return rng
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, rng)
    return gathered


def restore_rng_state(saved: Dict[str, Any] | list[Dict[str, Any]], rank: int, world_size: int,
                      logger: logging.Logger = _logger) -> None:
    """Restore what :func:`gather_rng_state` saved: this rank's states (a warning when the
    checkpoint was written by another number of processes: the random streams then differ)."""
    if isinstance(saved, list):  # saved by a distributed run: one state per rank
        if len(saved) != world_size:
            logger.warning(f"the checkpoint was written by {len(saved)} processes, this run has {world_size}: "
                           "random streams differ")
        saved = saved[rank % len(saved)]
    set_rng_state(saved)


def latest(output_dir: str | Path) -> Optional[Path]:
    """``output_dir/last.pth`` if it exists (for ``--resume auto``)."""
    path = Path(output_dir) / "last.pth"
    return path if path.is_file() else None


# --------------------------------------------------------------------------------------
# Output folder: summary.csv written atomically, reconciled with last.pth on resume
# --------------------------------------------------------------------------------------


def append_summary_atomic(path: Path, row: Dict[str, Any]) -> None:
    """Add ``row`` (``epoch``, ``train``, ``eval``, ``lr``) to ``path`` with timm's
    ``update_summary`` (same columns and number formatting), through a copy and a rename."""
    from timm.utils import update_summary

    def append(tmp: Path) -> None:
        update_summary(row["epoch"], row["train"], row["eval"], str(tmp), lr=row["lr"])

    safe_io.update_atomic(path, append)


def write_summary_atomic(path: Path, rows: list[Dict[str, Any]]) -> None:
    """Write ``path`` anew from ``rows`` (as :func:`append_summary_atomic`, one at a time)."""
    from timm.utils import update_summary

    def fill(tmp: Path) -> None:
        for row in rows:
            update_summary(row["epoch"], row["train"], row["eval"], str(tmp), lr=row["lr"])

    safe_io.write_atomic(path, fill)


def trim_summary_atomic(path: Path, start_epoch: int) -> None:
    """Drop the rows of epochs ``>= start_epoch`` (timm's ``trim_summary``), atomically."""
    from timm.utils.summary import trim_summary

    if not path.exists() or start_epoch > 0 and not any(e >= start_epoch for e in summary_epochs(path)):
        return
    safe_io.update_atomic(path, lambda tmp: trim_summary(str(tmp), start_epoch))


def summary_epochs(path: Path) -> list[int]:
    """The epochs of the rows of a summary CSV (none if it is missing)."""
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    epochs = []
    for r in rows[1:]:
        try:
            epochs.append(int(float(r[0])))
        except (IndexError, ValueError):  # a header line, or a line cut short by a kill (older versions)
            continue
    return epochs


def reconcile_outputs(output: Path, last_path: Path, ckpt: Dict[str, Any]) -> None:
    """Make ``summary.csv`` and ``best.pth`` agree with ``last.pth`` (``ckpt``: its ``epoch``,
    ``best`` and ``summary``) after a run was killed between its writes; warn about what was
    repaired, or what could not be."""
    done = ckpt["epoch"]
    summary_csv = output / "summary.csv"
    # summary.csv: a row for every finished epoch (rows past `done` were trimmed before)
    history = ckpt.get("summary")
    expected = [row["epoch"] for row in history] if history else list(range(done + 1))
    present = set(summary_epochs(summary_csv))
    missing = [e for e in expected if e not in present]
    if missing:
        if history:
            write_summary_atomic(summary_csv, history)
            _logger.warning(f"{summary_csv} lacked the rows of finished epoch(s) {missing} "
                            f"(a run stopped between its writes): rewritten from {last_path}")
        else:
            _logger.warning(f"{summary_csv} lacks the rows of finished epoch(s) {missing}; "
                            f"{last_path} predates the stored rows, so they cannot be rewritten")
    # best.pth: the checkpoint of the best epoch recorded in last.pth
    best = ckpt["best"]
    if best.get("epoch", -1) < 0:
        return
    best_path = output / "best.pth"
    try:
        best_epoch = load(best_path, mmap=True).get("epoch") if best_path.is_file() else None
        found = f"holds epoch {best_epoch}" if best_path.is_file() else "is missing"
    except ValueError as err:
        best_epoch, found = None, f"cannot be read ({err})"
    if best_epoch == best["epoch"]:
        return
    if best["epoch"] == done:
        safe_io.copy_atomic(last_path, best_path)
        _logger.warning(f"{best_path} {found}, but {last_path} records the best top-1 {best['top1']:.2f} "
                        f"at epoch {done} (a run stopped between writing last.pth and best.pth): "
                        f"{best_path} rewritten from {last_path}")
    else:
        _logger.warning(f"{best_path} {found}, but {last_path} records the best top-1 {best['top1']:.2f} "
                        f"at epoch {best['epoch']}; "
                        f"it cannot be rebuilt ({last_path} holds epoch {done}): the next better epoch will write it")


def write_epoch(output: Path, state: Dict[str, Any], row: Dict[str, Any], is_best: bool = False) -> None:
    """Write an epoch's outputs in the order a resume can put right (:func:`reconcile_outputs`):
    the ``summary.csv`` row, then ``last.pth`` (the commit point: a resume starts from it), then,
    when ``is_best``, ``best.pth`` (a copy of it, rebuilt from ``last.pth`` if the run dies before)."""
    output = Path(output)
    append_summary_atomic(output / "summary.csv", row)
    safe_io.save_atomic(state, output / "last.pth")
    if is_best:
        safe_io.save_atomic(state, output / "best.pth")


def args_dict(args) -> Dict[str, Any]:
    """A run's arguments as stored in its checkpoints: a dict, tuples as lists."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}


def data_config(img_size: int, crop_pct: float, interpolation: str, mean, std) -> Dict[str, Any]:
    """A checkpoint's ``data_config``: the evaluation preprocessing of the model it holds."""
    return {"input_size": (3, img_size, img_size), "crop_pct": crop_pct, "interpolation": interpolation,
            "mean": tuple(mean), "std": tuple(std)}


def prepare_output(output: Path, logger: logging.Logger = _logger) -> None:
    """Delete the temporary files a killed write left in ``output`` (a new run or a resume starts with none;
    those of a live writer, a run still going in the same folder, are kept)."""
    stale = safe_io.remove_stale_temporaries(output)
    if stale:
        logger.warning(f"deleted {len(stale)} temporary file(s) left by an interrupted write: "
                       f"{', '.join(str(p) for p in stale)}")
