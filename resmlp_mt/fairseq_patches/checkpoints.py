"""Safe checkpoint handling for every fairseq tool that loads this plugin.

Installed once, on ``import resmlp_mt`` (``--user-dir resmlp_mt`` does that before any
checkpoint is read), by :func:`install`. It closes these holes of fairseq 0.12:

1. **Code in configuration strings.** torch's ``weights_only`` loading refuses pickled code,
   but a checkpoint's *configuration* holds strings that fairseq later passes to ``eval()``:
   ``fairseq.utils.eval_str_list`` / ``eval_str_dict`` / ``eval_bool`` (about 60 call sites,
   e.g. the Transformer's ``adaptive_softmax_cutoff``) and direct ``eval(args.encoder_layers)``
   in fconv, wav2vec and others. A checkpoint with ``"[__import__('os').system('...')]"`` in
   such an option would run the command, one with ``"[0] * 10**12"`` exhaust memory. Guards:

   * every string of a loaded checkpoint's ``args`` / ``cfg`` is parsed (never evaluated)
     and refused if it holds a call or a lambda, or is a literal too large to evaluate
     (:func:`check_checkpoint_config`), before fairseq upgrades the config or builds a model;
     the error names the file and the option;
   * fairseq's three ``eval_*`` helpers evaluate literals and arithmetic on literals only,
     within bounds of size and depth (:func:`literal_value`), whoever calls them;
   * a file that holds pickled objects is refused with a message naming it and the global it
     wanted, not torch's advice to load it unsafely.

2. **Torn copies.** fairseq writes the numbered checkpoint atomically, then *copies* it to
   ``checkpoint_last.pt`` / ``checkpoint_best.pt`` with ``shutil.copyfile``; a kill during the
   copy leaves a truncated file that every restart then fails to read. Copies are now made
   to a temporary file in the same folder, named with the writer's pid, and renamed into
   place (:class:`AtomicCopyPathManager`, :func:`resmlp_core.io.copy_atomic`).

3. **Restarts** (:func:`load_checkpoint_with_fallback`), of ``fairseq-train`` with the default
   ``--restore-file checkpoint_last.pt``: temporaries of killed saves are removed; an
   unreadable ``checkpoint_last.pt`` is kept aside and the run resumes from its newest readable
   checkpoint; a ``checkpoint_last.pt`` older than a complete numbered checkpoint (a kill
   between the save and the copy) is replaced by it; a run that has already reached
   ``--max-update`` (or ``--max-epoch``, ``--stop-time-hours``) stops with one log line and exit
   status 0, writing nothing (fairseq would train one more update and overwrite
   ``checkpoint_last.pt`` and ``checkpoint_best.pt`` at every retry). Each logs what it did,
   naming the files.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import re
import shutil
import time
import zipfile
from typing import Any, Iterator, Tuple

from resmlp_core.checkpoint import weights_only_refusal
from resmlp_core.io import copy_atomic, remove_stale_temporaries

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
        holds = (f"keys: {', '.join(sorted(map(str, state))[:12])}" if isinstance(state, dict)
                 else f"a {type(state).__name__}")
        raise NotAFairseqCheckpointError(
            f"{source}: not a fairseq checkpoint (it holds {holds}; a fairseq checkpoint holds "
            "model, cfg or args, and optimizer_history). Vision checkpoints are read by "
            "python -m vision.evaluate."
        )


# ---------------------------------------------------------------------------------------------
# 1. Configuration strings
# ---------------------------------------------------------------------------------------------

_EXECUTING_NODES = (ast.Call, ast.Lambda)

# Bounds of :func:`literal_value`: what an option of a real configuration never comes near, and
# what any string within them costs to evaluate (microseconds, kilobytes).
MAX_LITERAL_SIZE = 100_000  # elements of a sequence (all levels counted) or characters of a string
MAX_LITERAL_INT = 2**64  # magnitude of an integer
MAX_LITERAL_DEPTH = 50  # nesting of containers and operators


class LiteralLimitError(ValueError):
    """A configuration string is a literal, but too large or too deep to evaluate safely."""


def _parse_expression(text: str, option: str) -> ast.Expression:
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"{option}: {_shown(text)} is not a Python literal ({e.msg})") from None
    except (RecursionError, MemoryError):  # Python's own parser gave up: nested far too deep
        raise LiteralLimitError(
            f"{option}: {_shown(text)} is nested too deeply to evaluate (more than {MAX_LITERAL_DEPTH} levels)"
        ) from None


def executes_code(text: str) -> bool:
    """Whether ``eval(text)`` could run code: ``text`` parses as a Python expression holding a
    call or a lambda. Plain strings (paths, names, ``"[(512, 3)] * 20"``) do not."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # eval() would fail too
        return False
    return any(isinstance(node, _EXECUTING_NODES) for node in ast.walk(tree))


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 120 else f"{text[:100]!r}... ({len(text)} characters)"


def _size(value: Any) -> int:
    """Elements of a literal value, all levels counted (characters of a string; a number or an
    empty container counts 1)."""
    if isinstance(value, (str, bytes)):
        return max(len(value), 1)
    if isinstance(value, dict):
        return max(sum(_size(k) + _size(v) for k, v in value.items()), 1)
    if isinstance(value, (list, tuple, set, frozenset)):
        return max(sum(_size(item) for item in value), 1)
    return 1


_ARITHMETIC = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}  # fmt: skip
_NUMBER = (int, float, complex)  # bool is an int


class _BoundedLiteral:
    """Evaluate a parsed literal bottom-up, checking every intermediate result against the
    bounds *before* computing it: no string of any length costs more than the bounds allow."""

    def __init__(self, text: str, option: str):
        self.text, self.option = text, option

    def refuse(self, why: str, error=ValueError):
        raise error(f"{self.option}: {_shown(self.text)} {why}")

    def too_large(self, what: str):
        self.refuse(
            f"is too large to evaluate ({what}; at most {MAX_LITERAL_SIZE} elements or characters, integers "
            f"below 2**64)",
            LiteralLimitError,
        )

    def checked(self, value):
        if isinstance(value, int) and abs(value) >= MAX_LITERAL_INT:
            self.too_large(f"an integer of {abs(value).bit_length()} bits")
        if isinstance(value, (str, bytes, list, tuple, set, frozenset, dict)) and _size(value) > MAX_LITERAL_SIZE:
            self.too_large(f"{_size(value)} elements")
        return value

    def __call__(self, node: ast.AST, depth: int = 0):
        if depth > MAX_LITERAL_DEPTH:
            self.refuse(f"is nested too deeply to evaluate (more than {MAX_LITERAL_DEPTH} levels)", LiteralLimitError)
        if isinstance(node, ast.Expression):
            return self(node.body, depth)
        if isinstance(node, ast.Constant):
            return self.checked(node.value)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items, size = [], 0
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    self.not_literal(element)
                items.append(self(element, depth + 1))
                size += _size(items[-1])
                if size > MAX_LITERAL_SIZE:
                    self.too_large(f"more than {size} elements")
            kind = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
            try:
                return kind(items)
            except TypeError as e:  # a list in a set
                self.refuse(f"is not a valid literal ({e})")
        if isinstance(node, ast.Dict):
            if any(key is None for key in node.keys):  # {**other}
                self.not_literal(node)
            pairs = [(self(k, depth + 1), self(v, depth + 1)) for k, v in zip(node.keys, node.values)]
            try:
                return self.checked(dict(pairs))
            except TypeError as e:  # a list as a key
                self.refuse(f"is not a valid literal ({e})")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            operand = self(node.operand, depth + 1)
            if not isinstance(operand, _NUMBER):
                self.refuse(f"is not a valid literal (unary {type(node.op).__name__} of a {type(operand).__name__})")
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = self(node.left, depth + 1), self(node.right, depth + 1)
            self.check_cost(node.op, left, right)
            try:
                return self.checked(_ARITHMETIC[type(node.op)](left, right))
            except (TypeError, ZeroDivisionError, OverflowError, ValueError) as e:
                self.refuse(f"is not a valid literal ({type(e).__name__}: {e})")
        self.not_literal(node)

    def check_cost(self, op: ast.operator, left, right) -> None:
        """Refuse an operation whose result would break the bounds, before it is computed."""
        sequence = (str, bytes, list, tuple)
        if isinstance(op, ast.Mult) and (isinstance(left, sequence) or isinstance(right, sequence)):
            seq, times = (left, right) if isinstance(left, sequence) else (right, left)
            if isinstance(times, int) and _size(seq) * max(times, 0) > MAX_LITERAL_SIZE:
                self.too_large(f"{_size(seq)} element(s) repeated {times} times")
        elif isinstance(op, ast.Mod) and isinstance(left, (str, bytes)):
            self.refuse("is not a literal (%-formatting is not evaluated)")
        elif isinstance(op, ast.Pow) and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and abs(left).bit_length() * right > MAX_LITERAL_INT.bit_length():
                self.too_large(f"{left} ** {right}")
        # other arithmetic is on numbers below 2**64 (or floats): computed in no time, then checked

    def not_literal(self, node: ast.AST):
        self.refuse(
            f"is not a Python literal (it holds {type(node).__name__}); only numbers, strings, lists, tuples, "
            "dicts, sets, True/False/None and arithmetic on them are accepted, nothing is evaluated"
        )


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
    evaluated, or a literal too large to evaluate (``"[0] * 10**12"``: fconv and others pass
    their options to ``eval()`` itself). Raises :class:`UnsafeCheckpointError` naming ``source``
    and every such option."""
    code, costly = [], []
    for key in ("args", "cfg"):
        if state.get(key) is None:
            continue
        for name, text in iter_strings(state[key], key):
            if executes_code(text):
                code.append(f"{name} = {_shown(text)}")
            else:
                why = costly_literal(text, name)
                if why is not None:
                    costly.append(why)
    if code or costly:
        parts = []
        if code:
            more = f" (and {len(code) - 5} more)" if len(code) > 5 else ""
            shown = "; ".join(code[:5])
            parts.append(f"{len(code)} option(s) that fairseq would evaluate as Python code: {shown}{more}")
        if costly:
            more = f" (and {len(costly) - 5} more)" if len(costly) > 5 else ""
            parts.append(f"{len(costly)} option(s) too large to evaluate: {'; '.join(costly[:5])}{more}")
        raise UnsafeCheckpointError(
            f"{source}: refusing to load this checkpoint: its configuration holds {', and '.join(parts)}. "
            "A checkpoint written by fairseq holds neither; this file was crafted or corrupted. "
            "Nothing was executed."
        )


def literal_value(text: str, option: str = "option"):
    """The value of ``text`` as a Python literal (numbers, strings, lists, tuples, dicts,
    sets, booleans, None) or arithmetic on literals (``"[(512, 3)] * 20"``), evaluated by
    walking its syntax tree within bounds: at most ``MAX_LITERAL_SIZE`` elements or characters
    (all levels counted), integers below ``MAX_LITERAL_INT``, ``MAX_LITERAL_DEPTH`` levels of
    nesting. Anything else (a call above all) raises ``ValueError`` naming ``option``, a value
    past the bounds (``"[0] * 10**12"``, ``"9**9**9"``) :class:`LiteralLimitError`, before any
    large value is built: no string costs more than microseconds and kilobytes."""
    return _BoundedLiteral(text, option)(_parse_expression(text, option))


def costly_literal(text: str, option: str = "option") -> str | None:
    """Why evaluating ``text`` (as fairseq's ``eval()`` would) could exhaust memory or time, or
    None: it is a literal past the bounds of :func:`literal_value`, or nested too deeply to
    parse. Strings that are not literals (paths, names, code) are not this function's concern."""
    try:
        literal_value(text, option)
    except LiteralLimitError as e:
        return str(e)
    except ValueError:
        return None
    return None


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


def _atomic_path_manager(base):
    class AtomicCopyPathManager(base):
        """fairseq's PathManager, with local copies made atomic (:func:`resmlp_core.io.copy_atomic`:
        a temporary file named with the writer's pid, renamed into place)."""

        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if base.path_requires_pathmanager(src_path) or base.path_requires_pathmanager(dst_path):
                return base.copy(src_path, dst_path, overwrite=overwrite)
            if not overwrite and os.path.exists(dst_path):
                return False
            copy_atomic(src_path, dst_path)
            return True

    return AtomicCopyPathManager


# ---------------------------------------------------------------------------------------------
# 3. Restarts: the newest complete checkpoint, never a torn one, and nothing past the end
# ---------------------------------------------------------------------------------------------


def readable_checkpoint(path: str) -> bool:
    """Whether ``path`` is a complete torch zip archive (every member's CRC checks out)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def checkpoint_updates(path: str) -> int | None:
    """The number of updates a fairseq checkpoint was saved at (``optimizer_history[-1]``),
    read with the tensors memory-mapped, not read (cheap for any size); None if ``path`` cannot
    be read as one."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["optimizer_history"][-1]["num_updates"])
    except Exception:  # torn, not a zip archive, not a fairseq checkpoint
        return None


def _run_checkpoint_name(suffix: str) -> "re.Pattern[str]":
    return re.compile(rf"^checkpoint(\d+|_\d+_\d+|_best|\.best_.+){re.escape(suffix)}\.pt$")


def run_checkpoints(folder: str, suffix: str = "") -> list:
    """The checkpoints a run writes besides ``checkpoint_last``: numbered ones
    (``checkpointN.pt``, ``checkpoint_E_U.pt``), ``checkpoint_best.pt`` and the kept best ones
    (``checkpoint.best_<metric>_<value>.pt``); fairseq writes the first of those a save makes
    and copies it to the others and to ``checkpoint_last.pt``."""
    pattern = _run_checkpoint_name(suffix)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if pattern.match(name))


def newest_checkpoint(folder: str, suffix: str = "", than: int = -1, written_after: float | None = None):
    """``(path, updates)`` of the run checkpoint (:func:`run_checkpoints`) with the most updates,
    more than ``than`` (and, with ``written_after``, written later than that time), that is
    complete; None if there is none. Updates are read from the files, not guessed from names or
    times; of equals, a numbered checkpoint (the file fairseq saved, the others are its copies),
    then the newest file."""
    found = []
    for path in run_checkpoints(folder, suffix):
        if written_after is not None and os.path.getmtime(path) <= written_after:
            continue
        updates = checkpoint_updates(path)
        if updates is not None and updates > than:
            original = not os.path.basename(path).startswith(("checkpoint_best", "checkpoint.best_"))
            found.append((updates, original, os.path.getmtime(path), path))
    for updates, _, _, path in sorted(found, reverse=True):
        if readable_checkpoint(path):
            return path, updates
    return None


def _say(level: int, message: str, *args) -> None:
    # fairseq-train's logging.config.dictConfig disables loggers created before it (ours).
    logger.disabled = False
    logger.log(level, message, *args)


def recover_last_checkpoint(path: str, suffix: str = "") -> bool:
    """If ``path`` (a run's ``checkpoint_last.pt``) exists and is unreadable, keep it aside
    and put a copy of the run's newest readable checkpoint in its place, with a warning that
    names both files. Returns True when it did so. With no readable checkpoint to fall back on,
    raises an error naming the file (fairseq would otherwise fail on it at every restart).
    ``path`` exists throughout (other ranks may be looking)."""
    if not os.path.exists(path) or readable_checkpoint(path):
        return False
    folder = os.path.dirname(os.path.abspath(path))
    fallback = newest_checkpoint(folder, suffix)
    if fallback is None:
        raise RuntimeError(
            f"{path} is not a complete checkpoint (a torn or corrupted file, "
            f"{os.path.getsize(path)} bytes) and {folder} holds no other readable checkpoint to "
            "resume from; move it away to start afresh"
        )
    aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        os.link(path, aside)
    except OSError:  # no hard links here
        shutil.copy2(path, aside)
    copy_atomic(fallback[0], path)
    _say(
        logging.WARNING,
        "%s was unreadable (a torn or corrupted file, kept as %s); resuming from %s (%d updates), the newest "
        "readable checkpoint of this run: updates since it was written are trained again",
        path, aside, fallback[0], fallback[1],
    )  # fmt: skip
    return True


def resume_from_newest_checkpoint(path: str, suffix: str = "") -> bool:
    """If the run holds a complete checkpoint with more updates than ``path`` (its readable
    ``checkpoint_last.pt``), written after it, put a copy of it in ``path``'s place and log a
    warning naming both: a kill between fairseq's save of the numbered checkpoint and its copy
    to ``checkpoint_last.pt`` left the older one there. Returns True when it did so. (A
    ``checkpoint_last.pt`` copied from an older checkpoint on purpose, to go back, is newer than
    the others and is kept.)"""
    last_updates = checkpoint_updates(path)
    if last_updates is None:
        return False
    folder = os.path.dirname(os.path.abspath(path))
    newer = newest_checkpoint(folder, suffix, than=last_updates, written_after=os.path.getmtime(path))
    if newer is None:
        return False
    copy_atomic(newer[0], path)
    _say(
        logging.WARNING,
        "%s (%d updates) is older than %s (%d updates), a complete checkpoint of this run whose copy to it was "
        "interrupted: resuming from %s",
        path, last_updates, newer[0], newer[1], newer[0],
    )  # fmt: skip
    return True


def remove_stale_checkpoint_temporaries(folder: str, suffix: str = "") -> list:
    """Remove the temporary files that killed saves left in a run folder (the copies to
    ``checkpoint_last.pt`` / ``checkpoint_best.pt`` / kept best checkpoints, see
    :func:`resmlp_core.io.remove_stale_temporaries`); those of live writers are kept."""
    if not os.path.isdir(folder):
        return []
    run_file = _run_checkpoint_name(suffix)
    # .NAME.<pid>.<random>.tmp: the name of the file being written, whether or not it exists yet
    names = {entry[1:].rsplit(".", 3)[0] for entry in os.listdir(folder) if entry.startswith(".checkpoint")}
    names = {name for name in names if name == f"checkpoint_last{suffix}.pt" or run_file.match(name)}
    removed = remove_stale_temporaries(folder, names=sorted(names))
    if removed:
        _say(logging.INFO, "removed %d temporary file(s) of killed checkpoint saves from %s: %s", len(removed),
             folder, ", ".join(p.name for p in removed))  # fmt: skip
    return removed


def finished_because(cfg, trainer, epoch_itr) -> str | None:
    """Why a run restored from its checkpoint has already met its stopping condition
    (``--max-update``, ``--max-epoch``, ``--stop-time-hours``), or None. fairseq would train one
    more update past ``--max-update`` (and past ``--stop-time-hours``) before noticing, and
    overwrite ``checkpoint_last.pt`` and ``checkpoint_best.pt``."""
    optimization = cfg.optimization
    updates = trainer.get_num_updates()
    if optimization.max_update and updates >= optimization.max_update:
        return f"{updates} updates done, --max-update {optimization.max_update}"
    if optimization.max_epoch and epoch_itr.next_epoch_idx > optimization.max_epoch:
        return f"{epoch_itr.next_epoch_idx - 1} epochs done, --max-epoch {optimization.max_epoch}"
    hours = trainer.cumulative_training_time() / 3600
    if optimization.stop_time_hours > 0 and hours > optimization.stop_time_hours:
        return f"{hours:.2f} hours trained, --stop-time-hours {optimization.stop_time_hours}"
    return None


def load_checkpoint_with_fallback(original):
    """fairseq's ``checkpoint_utils.load_checkpoint`` (what ``fairseq-train`` calls before it
    trains), made safe for restarts of a run (the default ``--restore-file checkpoint_last.pt``):

    * temporaries of killed saves are removed (:func:`remove_stale_checkpoint_temporaries`);
    * a torn ``checkpoint_last.pt`` is replaced by the newest readable checkpoint
      (:func:`recover_last_checkpoint`), an older one by a newer complete checkpoint
      (:func:`resume_from_newest_checkpoint`);
    * a run already finished (:func:`finished_because`) stops there, with one log line and exit
      status 0, having written nothing: a retry or requeue of a finished command is harmless.
    """

    def load_checkpoint(cfg, trainer, **passthrough_args):
        restart = None
        if cfg.restore_file == "checkpoint_last.pt" and getattr(cfg, "save_dir", None):
            suffix = getattr(trainer, "checkpoint_suffix", "") or ""
            last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
            if getattr(trainer, "data_parallel_rank", 0) == 0 or getattr(cfg, "load_checkpoint_on_all_dp_ranks", False):
                remove_stale_checkpoint_temporaries(cfg.save_dir, suffix)
                if not recover_last_checkpoint(last, suffix):
                    resume_from_newest_checkpoint(last, suffix)
            if os.path.exists(last):
                restart = last
        extra_state, epoch_itr = original(cfg, trainer, **passthrough_args)
        full_cfg = getattr(trainer, "cfg", None)
        if restart is not None and extra_state is not None and full_cfg is not None:
            why = finished_because(full_cfg, trainer, epoch_itr)
            if why is not None:
                _say(
                    logging.INFO,
                    "this run is already finished (%s, restored from %s): nothing to train, nothing written; "
                    "raise the limit to train further",
                    why, restart,
                )  # fmt: skip
                raise SystemExit(0)
        return extra_state, epoch_itr

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
            refusal = weights_only_refusal(e, path)
            if refusal is not None:  # without torch's advice to load it unsafely
                raise UnsafeCheckpointError(f"refusing to load {refusal}") from None
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
