"""Crash-safe writes of files and folders: the one place every package and benchmark writes
through when a kill mid-write must not lose what was there.

* :func:`write_atomic` (and :func:`save_atomic`, :func:`copy_atomic`, :func:`write_text_atomic`,
  :func:`update_atomic`):
  a file is written to a temporary file in the same folder (``.NAME.<pid>.<random>.tmp``),
  flushed to disk and renamed over ``NAME``: a reader sees the old file or the complete new one.
* :func:`replace_folder` / :func:`staged_folder`: a folder is built under a hidden name beside
  its destination and swapped into place. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``
  call, atomic: there is no moment without a complete folder at the destination. Elsewhere the
  old folder is first renamed to ``.NAME.old`` and :func:`recover_folder` (called by the next
  writer, or by a reader) puts back whichever complete folder a kill left.
* :func:`remove_stale_temporaries`: the temporary files and folders that killed writers left,
  recognised by their names and by their writer's process id being gone.

Depends on the standard library only (``save_atomic`` imports torch when called).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List

__all__ = [
    "copy_atomic",
    "recover_folder",
    "remove_stale_temporaries",
    "replace_folder",
    "save_atomic",
    "staged_folder",
    "update_atomic",
    "write_atomic",
    "write_text_atomic",
]

# .NAME.<pid>.<random>.tmp (files) and .NAME.<pid>.<random>.dir (folders being built)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?P<kind>tmp|dir)$")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_atomic(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Create ``path`` atomically: ``fill(tmp)`` writes a temporary file in the same folder,
    which is flushed to disk and renamed over ``path``. A crash mid-write leaves the previous
    file intact and at worst a temporary file, which :func:`remove_stale_temporaries` removes
    once its writer is gone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fill(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode(0o666))  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through :func:`write_atomic`."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def update_atomic(path: str | os.PathLike, edit: Callable[[Path], None]) -> None:
    """Change ``path`` atomically (append a row, drop some): the temporary file starts as a copy
    of ``path`` (empty when ``path`` does not exist), ``edit(tmp)`` changes it in place, and it
    is renamed over ``path`` as in :func:`write_atomic`."""
    path = Path(path)

    def fill(tmp: Path) -> None:
        if path.exists():
            shutil.copyfile(path, tmp)
        edit(tmp)

    write_atomic(path, fill)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`write_atomic`."""
    import torch

    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` through :func:`write_atomic`, keeping ``src``'s permissions."""

    def fill(tmp: Path) -> None:
        with open(src, "rb") as inp, open(tmp, "wb") as out:
            shutil.copyfileobj(inp, out, length=16 << 20)
        shutil.copymode(src, tmp)

    write_atomic(dst, fill)
    # write_atomic set the umask mode; the copy keeps the source's
    shutil.copymode(src, dst)


def remove_stale_temporaries(folder: str | os.PathLike, names: List[str] | None = None) -> List[Path]:
    """Delete what killed writers left in ``folder``: temporary files and half-built folders
    named by :func:`write_atomic` / :func:`staged_folder` whose writer process is gone (those
    of live processes, a concurrent writer's, are kept). ``names`` limits it to the temporaries
    of those destination names. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = _TEMP.match(entry.name)
        if not match or (names is not None and match["name"] not in names):
            continue
        if _pid_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# --- folders ------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where the
    call is not available (another OS, an old kernel or C library, a file system without it)."""
    global _renameat2
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            func = libc.renameat2
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            func.restype = ctypes.c_int
            _renameat2 = func
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    at_cwd = -100  # AT_FDCWD
    if _renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _old_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def _new_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.new")


def recover_folder(dest: str | os.PathLike) -> bool:
    """Finish a folder replacement that a kill interrupted where the atomic swap is not
    available: if ``dest`` is missing, the complete new folder (``.NAME.new``) or else the old
    one (``.NAME.old``) is renamed back to ``dest``. Returns True when it moved one."""
    dest = Path(dest)
    if dest.exists():
        return False
    for candidate in (_new_name(dest), _old_name(dest)):
        if candidate.is_dir():
            candidate.rename(dest)
            return True
    return False


def replace_folder(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the complete folder ``new`` at ``dest`` (same file system), replacing any folder
    there. ``dest`` always holds a complete folder, the old or the new one: on Linux the two
    are swapped atomically and the old one is then deleted; elsewhere a kill between the two
    renames is undone by :func:`recover_folder`."""
    new, dest = Path(new), Path(dest)
    recover_folder(dest)
    old, staged = _old_name(dest), _new_name(dest)
    for leftover in (old, staged):  # what a kill left after (or before) a complete replacement
        shutil.rmtree(leftover, ignore_errors=True)
    if not dest.exists():
        new.rename(dest)
        return
    if _exchange(new, dest):
        shutil.rmtree(new)  # now the old folder
        return
    try:
        new.rename(staged)
        dest.rename(old)
        staged.rename(dest)
    except BaseException:  # an interrupt between the renames: put a complete folder back at once
        recover_folder(dest)
        raise
    shutil.rmtree(old)


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a folder and put it at ``dest`` only once complete::

        with staged_folder(out, replace=force) as tmp:
            (tmp / "model.pt").write_bytes(...)

    The body writes into a hidden folder beside ``dest`` (``.NAME.<pid>.<random>.dir``); on a
    clean exit it replaces ``dest`` (:func:`replace_folder`), on an exception it is deleted and
    ``dest`` is untouched (or put back, when the exception interrupted the replacement).
    Half-built folders of killed writers are removed on entry. An existing ``dest`` is an error
    (``FileExistsError``) unless ``replace``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(dest)
    remove_stale_temporaries(dest.parent, names=[dest.name])
    if dest.exists() and not replace:
        raise FileExistsError(f"{dest} exists")
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), suffix=".dir", dir=dest.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp creates 0700
        yield tmp
        replace_folder(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
