"""Safe checkpoint handling for every fairseq tool that loads this plugin.

Installed once, on ``import resmlp_mt`` (``--user-dir resmlp_mt`` does that before any
checkpoint is read), by :func:`install`. It closes three holes of fairseq 0.12:

1. **Code in configuration strings.** torch's ``weights_only`` loading refuses pickled code,
   but a checkpoint's *configuration* holds strings that fairseq later passes to ``eval()``:
   ``fairseq.utils.eval_str_list`` / ``eval_str_dict`` / ``eval_bool`` (about 60 call sites,
   e.g. the Transformer's ``adaptive_softmax_cutoff``) and direct ``eval(args.encoder_layers)``
   in fconv, wav2vec and others. A checkpoint with ``"[__import__('os').system('...')]"`` in
   such an option would run the command. Two guards:

   * every string of a loaded checkpoint's ``args`` / ``cfg`` is parsed (never evaluated)
     and refused if it holds a call or a lambda (:func:`check_checkpoint_config`), before
     fairseq upgrades the config or builds a model; the error names the file and the option;
   * fairseq's three ``eval_*`` helpers evaluate literals and arithmetic on literals only
     (:func:`literal_value`), whoever calls them.

2. **Torn copies.** fairseq writes the numbered checkpoint atomically, then *copies* it to
   ``checkpoint_last.pt`` / ``checkpoint_best.pt`` with ``shutil.copyfile``; a kill during the
   copy leaves a truncated file that every restart then fails to read. Copies are now made
   to a temporary file in the same folder and renamed into place (:class:`AtomicCopyPathManager`).

3. **Restart from a torn ``checkpoint_last.pt``** (written by another tool, or before this
   plugin was used): the restart moves the unreadable file aside (nothing is deleted),
   resumes from the newest readable checkpoint of the run and logs a warning naming both
   files (:func:`load_checkpoint_with_fallback`).
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from typing import Any, Iterator, Tuple

logger = logging.getLogger(__name__)


class UnsafeCheckpointError(ValueError):
    """A checkpoint's configuration holds a string that fairseq would evaluate as code."""


class NotAFairseqCheckpointError(ValueError):
    """A file given as a fairseq checkpoint is something else (text, a vision checkpoint...)."""


def check_fairseq_layout(state: Any, source: str = "checkpoint") -> None:
    """Refuse an object that is not a fairseq checkpoint (fairseq itself would fail later with
    a bare ``KeyError``), naming ``source`` and what it holds instead."""
    if (
        not isinstance(state, dict)
        or "model" not in state
        or ("args" not in state and "cfg" not in state)
        or ("optimizer_history" not in state and "best_loss" not in state)
    ):
        holds = f"keys: {', '.join(sorted(map(str, state))[:12])}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise NotAFairseqCheckpointError(
            f"{source}: not a fairseq checkpoint (it holds {holds}; a fairseq checkpoint holds "
            "model, cfg or args, and optimizer_history). Vision checkpoints are read by "
            "python -m vision.evaluate."
        )


# ---------------------------------------------------------------------------------------------
# 1. Configuration strings
# ---------------------------------------------------------------------------------------------

_EXECUTING_NODES = (ast.Call, ast.Lambda)
_LITERAL_NODES = (
    ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Load,
    ast.UnaryOp, ast.UAdd, ast.USub, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div,
    ast.FloorDiv, ast.Mod,
)  # fmt: skip


def executes_code(text: str) -> bool:
    """Whether ``eval(text)`` could run code: ``text`` parses as a Python expression holding a
    call or a lambda. Plain strings (paths, names, ``"[(512, 3)] * 20"``) do not."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):  # not an expression, or a NUL byte: eval() would fail too
        return False
    return any(isinstance(node, _EXECUTING_NODES) for node in ast.walk(tree))


def iter_strings(value: Any, path: str = "") -> Iterator[Tuple[str, str]]:
    """``(dotted option name, string)`` for every string inside a checkpoint configuration:
    nested dicts (plain or OmegaConf), lists, tuples and ``argparse.Namespace`` objects."""
    if isinstance(value, str):
        yield path, value
        return
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    else:
        try:
            from omegaconf import DictConfig, ListConfig, OmegaConf

            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=False)
        except ImportError:  # pragma: no cover - fairseq always has omegaconf
            pass
    if isinstance(value, dict):
        for key, item in value.items():
            yield from iter_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple, set)):
        for i, item in enumerate(value):
            yield from iter_strings(item, f"{path}[{i}]")


def check_checkpoint_config(state: dict, source: str = "checkpoint") -> None:
    """Refuse a checkpoint whose ``args`` or ``cfg`` hold a string that would run code if
    evaluated. Raises :class:`UnsafeCheckpointError` naming ``source`` and every such option."""
    bad = [
        (name, text)
        for key in ("args", "cfg")
        if state.get(key) is not None
        for name, text in iter_strings(state[key], key)
        if executes_code(text)
    ]
    if bad:
        shown = "; ".join(f"{name} = {text[:120]!r}" for name, text in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UnsafeCheckpointError(
            f"{source}: refusing to load this checkpoint: its configuration holds "
            f"{len(bad)} option(s) that fairseq would evaluate as Python code: {shown}{more}. "
            "A checkpoint written by fairseq never holds calls in its options; this file was "
            "crafted or corrupted. Nothing was executed."
        )


def literal_value(text: str, option: str = "option"):
    """The value of ``text`` as a Python literal (numbers, strings, lists, tuples, dicts,
    sets, booleans, None) or arithmetic on literals (``"[3] * 4"``). Anything else, a call
    above all, raises ``ValueError`` naming ``option``: it is never evaluated."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"{option}: {text!r} is not a Python literal ({e.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _LITERAL_NODES):
            raise ValueError(
                f"{option}: {text!r} is not a Python literal (it holds {type(node).__name__}); "
                "only numbers, strings, lists, tuples, dicts, sets, True/False/None and "
                "arithmetic on them are accepted, nothing is evaluated"
            )
    return eval(compile(tree, "<literal>", "eval"), {"__builtins__": {}}, {})  # literals only


def eval_str_list(x, type=float):
    """fairseq.utils.eval_str_list, evaluating literals only."""
    if x is None:
        return None
    if isinstance(x, str):
        x = literal_value(x, "list option")
    try:
        return list(map(type, x))
    except TypeError:
        return [type(x)]


def eval_str_dict(x, type=dict):
    """fairseq.utils.eval_str_dict, evaluating literals only."""
    if x is None:
        return None
    if isinstance(x, str):
        x = literal_value(x, "dict option")
    return x


def eval_bool(x, default=False):
    """fairseq.utils.eval_bool, evaluating literals only."""
    if x is None:
        return default
    try:
        return bool(literal_value(x, "boolean option") if isinstance(x, str) else x)
    except TypeError:
        return default


# ---------------------------------------------------------------------------------------------
# 2. Atomic copies of checkpoint_last.pt / checkpoint_best.pt
# ---------------------------------------------------------------------------------------------


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through a temporary file in ``dst``'s folder and an atomic
    rename: ``dst`` is always either the old file or the complete new one."""
    folder = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, length=16 << 20)
            out.flush()
            os.fsync(out.fileno())
        shutil.copymode(src, tmp)  # mkstemp makes it private; keep the source's permissions
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_path_manager(base):
    class AtomicCopyPathManager(base):
        """fairseq's PathManager, with local copies made atomic (:func:`atomic_copy`)."""

        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if base.path_requires_pathmanager(src_path) or base.path_requires_pathmanager(dst_path):
                return base.copy(src_path, dst_path, overwrite=overwrite)
            if not overwrite and os.path.exists(dst_path):
                return False
            atomic_copy(src_path, dst_path)
            return True

    return AtomicCopyPathManager


# ---------------------------------------------------------------------------------------------
# 3. Restart from an unreadable checkpoint_last.pt
# ---------------------------------------------------------------------------------------------


def readable_checkpoint(path: str) -> bool:
    """Whether ``path`` is a complete torch zip archive (every member's CRC checks out)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


_RUN_CHECKPOINT = re.compile(r"^checkpoint(\d+|_\d+_\d+|_best)\.pt$")


def newest_readable_checkpoint(folder: str):
    """The most recently written readable checkpoint of a run folder: the newest numbered one
    (``checkpointN.pt`` / ``checkpoint_E_U.pt``), unless ``checkpoint_best.pt`` is more than a
    few seconds newer (it is otherwise a copy of a numbered one); None if there is none."""
    names = [name for name in os.listdir(folder) if _RUN_CHECKPOINT.match(name)]
    numbered = sorted((os.path.join(folder, n) for n in names if n != "checkpoint_best.pt"), key=os.path.getmtime, reverse=True)
    newest = next((path for path in numbered if readable_checkpoint(path)), None)
    best = os.path.join(folder, "checkpoint_best.pt")
    if "checkpoint_best.pt" in names and readable_checkpoint(best):
        if newest is None or os.path.getmtime(best) > os.path.getmtime(newest) + 5:
            return best
    return newest


def recover_last_checkpoint(path: str) -> bool:
    """If ``path`` (a run's ``checkpoint_last.pt``) exists and is unreadable, move it aside
    and put a copy of the run's newest readable checkpoint in its place, with a warning that
    names both files. Returns True when it did so. With no readable checkpoint to fall back on,
    raises an error naming the file (fairseq would otherwise fail on it at every restart)."""
    if not os.path.exists(path) or readable_checkpoint(path):
        return False
    folder = os.path.dirname(os.path.abspath(path))
    aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    fallback = newest_readable_checkpoint(folder)
    if fallback is None:
        raise RuntimeError(
            f"{path} is not a complete checkpoint (a torn or corrupted file, "
            f"{os.path.getsize(path)} bytes) and {folder} holds no other readable checkpoint to "
            "resume from; move it away to start afresh"
        )
    os.replace(path, aside)
    atomic_copy(fallback, path)
    # fairseq-train's logging.config.dictConfig disables loggers created before it (ours).
    logger.disabled = False
    logger.warning(
        "%s was unreadable (a torn or corrupted file, kept as %s); resuming from %s, the newest "
        "readable checkpoint of this run: updates since it was written are trained again",
        path, aside, fallback,
    )  # fmt: skip
    return True


def load_checkpoint_with_fallback(original):
    def load_checkpoint(cfg, trainer, **passthrough_args):
        if cfg.restore_file == "checkpoint_last.pt" and getattr(cfg, "save_dir", None):
            suffix = getattr(trainer, "checkpoint_suffix", "") or ""
            last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
            if getattr(trainer, "data_parallel_rank", 0) == 0 or getattr(cfg, "load_checkpoint_on_all_dp_ranks", False):
                recover_last_checkpoint(last)
        return original(cfg, trainer, **passthrough_args)

    load_checkpoint.__wrapped__ = original
    load_checkpoint.__doc__ = original.__doc__
    return load_checkpoint


def checked_load_checkpoint_to_cpu(original_load, original_upgrade):
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        from fairseq import checkpoint_utils

        read = []

        def upgrade_after_check(state):
            read.append(True)
            if isinstance(state, dict):
                check_checkpoint_config(state, source=str(path))
            check_fairseq_layout(state, source=str(path))
            return original_upgrade(state)

        checkpoint_utils._upgrade_state_dict = upgrade_after_check
        try:
            return original_load(path, arg_overrides=arg_overrides, load_on_all_ranks=load_on_all_ranks)
        except Exception as e:
            if read or isinstance(e, OSError):  # read fine (the error is fairseq's), or no file
                raise
            first_line = str(e).splitlines()[0] if str(e) else ""
            raise NotAFairseqCheckpointError(
                f"{path}: not a torch checkpoint that loads weights-only ({type(e).__name__}: "
                f"{first_line}); expected a fairseq checkpoint (checkpoint_best.pt, ...)"
            ) from e
        finally:
            checkpoint_utils._upgrade_state_dict = original_upgrade

    load_checkpoint_to_cpu.__wrapped__ = original_load
    load_checkpoint_to_cpu.__doc__ = original_load.__doc__
    return load_checkpoint_to_cpu


_INSTALLED = False


def install() -> None:
    """Put the guards in place in fairseq's modules (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from fairseq import checkpoint_utils, utils

    from fairseq import options

    for module in (utils, options):  # options imported the helpers by name
        module.eval_str_list = eval_str_list
        module.eval_str_dict = eval_str_dict
        module.eval_bool = eval_bool
    checkpoint_utils.load_checkpoint_to_cpu = checked_load_checkpoint_to_cpu(
        checkpoint_utils.load_checkpoint_to_cpu, checkpoint_utils._upgrade_state_dict
    )
    checkpoint_utils.PathManager = _atomic_path_manager(checkpoint_utils.PathManager)
    checkpoint_utils.load_checkpoint = load_checkpoint_with_fallback(checkpoint_utils.load_checkpoint)
    _INSTALLED = True
