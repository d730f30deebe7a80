"""Drills on crash-safe files and folders (:mod:`resmlp_core.io`) and on the writers that use it:
a writer killed at any point (an exception, or a real process killed with SIGKILL) leaves the
old file or folder complete, and the next writer removes what the killed one left.

The model-export drill kills ``scripts/export_model.py --force`` after each file-system step of
the replacement of a model folder (and in the middle of writing ``model.pt``): the folder always
holds a complete model, and the next export leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from helpers import DEAD_PID
from resmlp_core import io as safe_io

# --------------------------------------------------------------------------------------
# A writer in a process of its own, killed with SIGKILL at a chosen point
# --------------------------------------------------------------------------------------

# Loads resmlp_core/io.py by its path (standard library only: no torch to import), arms the kill,
# then runs one write. argv: io.py, what (file | folder), destination, new content, kill point.
WRITER = r"""
import importlib.util, os, signal, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("crash_io", sys.argv[1])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)
what, dest, content, kill = sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
print(os.getpid(), flush=True)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if kill == "between-renames":  # the swap without renameat2, killed with no folder at dest
    io._exchange = lambda a, b: False
    real_rename = Path.rename
    def rename(self, target):
        real_rename(self, target)
        if Path(target).name == "." + dest.name + ".old":
            die()
    Path.rename = rename
if kill == "after-exchange":  # swapped, the old folder not deleted yet
    real_exchange = io._exchange
    def exchange(a, b):
        done = real_exchange(a, b)
        die()
    io._exchange = exchange

if what == "file":
    def fill(tmp):
        tmp.write_text(content[: len(content) // 2])
        if kill == "in-fill":
            die()
        with open(tmp, "a") as fh:
            fh.write(content[len(content) // 2:])
    io.write_atomic(dest, fill)
else:
    with io.staged_folder(dest, replace=True) as tmp:
        (tmp / "a.txt").write_text(content)
        if kill == "in-body":
            die()
        (tmp / "b.txt").write_text(content)
"""


def killed_writer(what: str, dest: Path, content: str, kill: str) -> int:
    """Run :data:`WRITER`, which must die by SIGKILL; returns its process id (gone by now)."""
    args = [sys.executable, "-c", WRITER, str(REPO / "resmlp_core" / "io.py"), what, str(dest), content, kill]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    return int(proc.stdout)


def folder(path: Path, content: str) -> Path:
    """A complete folder: ``a.txt`` and ``b.txt`` holding ``content``."""
    path.mkdir()
    for name in ("a.txt", "b.txt"):
        (path / name).write_text(content)
    return path


def assert_complete(path: Path, content: str) -> None:
    assert sorted(p.name for p in path.iterdir()) == ["a.txt", "b.txt"]
    assert all((path / name).read_text() == content for name in ("a.txt", "b.txt"))


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


class Killed(BaseException):
    """Stands for a kill in the same process (not an Exception: no handler of the writer catches it)."""


# --------------------------------------------------------------------------------------
# 1. Files
# --------------------------------------------------------------------------------------


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.json"
    safe_io.write_text_atomic(path, "old\n")

    def fill(tmp: Path) -> None:
        tmp.write_text("ne")
        raise Killed()

    with pytest.raises(Killed):
        safe_io.write_atomic(path, fill)
    assert path.read_text() == "old\n"
    assert hidden(tmp_path) == []  # the writer deleted its temporary file on the way out


def test_a_writer_killed_midway_keeps_the_old_file_and_its_temporary_is_removed_later(tmp_path):
    path = tmp_path / "f.json"
    safe_io.write_text_atomic(path, "old\n")
    pid = killed_writer("file", path, "new content\n", "in-fill")
    assert path.read_text() == "old\n"
    (temporary,) = [tmp_path / name for name in hidden(tmp_path)]
    assert temporary.name.startswith(f".f.json.{pid}.") and temporary.name.endswith(".tmp")
    assert temporary.read_text() == "new co"  # half written
    assert safe_io.remove_stale_temporaries(tmp_path) == [temporary]
    assert hidden(tmp_path) == [] and path.read_text() == "old\n"


def test_update_atomic_edits_a_copy_of_the_file(tmp_path):
    path = tmp_path / "rows.csv"
    safe_io.update_atomic(path, lambda tmp: tmp.open("a").write("1\n"))  # a missing file starts empty
    safe_io.update_atomic(path, lambda tmp: tmp.open("a").write("2\n"))

    def append_then_die(tmp: Path) -> None:
        tmp.open("a").write("3\n")
        raise Killed()

    with pytest.raises(Killed):
        safe_io.update_atomic(path, append_then_die)
    assert path.read_text() == "1\n2\n"
    assert hidden(tmp_path) == []


def test_stale_temporaries_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_file = tmp_path / f".last.pth.{DEAD_PID}.abc123.tmp"
        dead_dir = tmp_path / f".model.{DEAD_PID}.x_y.dir"
        mine = tmp_path / f".last.pth.{os.getpid()}.def456.tmp"
        other_live = tmp_path / f".model.{live.pid}.zz.dir"
        not_ours = [tmp_path / ".last.pth.tmp", tmp_path / "last.pth", tmp_path / f".notes.{DEAD_PID}.txt"]
        for path in (dead_file, mine, *not_ours):
            path.write_text("x")
        for path in (dead_dir, other_live):
            folder(path, "x")
        assert safe_io.remove_stale_temporaries(tmp_path, names=["last.pth"]) == [dead_file]
        assert safe_io.remove_stale_temporaries(tmp_path) == [dead_dir]
        assert sorted(tmp_path.iterdir()) == sorted([mine, other_live, *not_ours])
    finally:
        live.kill()
        live.wait()
    assert safe_io.remove_stale_temporaries(tmp_path) == [other_live]  # its writer is gone now


# --------------------------------------------------------------------------------------
# 2. Folders
# --------------------------------------------------------------------------------------


def test_a_staged_folder_that_fails_midway_keeps_the_old_folder(tmp_path):
    dest = folder(tmp_path / "model", "old")
    with pytest.raises(Killed), safe_io.staged_folder(dest, replace=True) as tmp:
        (tmp / "a.txt").write_text("new")
        raise Killed()
    assert_complete(dest, "old")
    assert hidden(tmp_path) == []
    with pytest.raises(FileExistsError):
        with safe_io.staged_folder(dest):
            pass


def test_a_staged_folder_killed_midway_keeps_the_old_folder_and_the_next_writer_removes_its_leftovers(tmp_path):
    dest = folder(tmp_path / "model", "old")
    killed_writer("folder", dest, "new", "in-body")
    assert_complete(dest, "old")
    (leftover,) = hidden(tmp_path)
    assert leftover.startswith(".model.") and leftover.endswith(".dir")
    with safe_io.staged_folder(dest, replace=True) as tmp:
        assert hidden(tmp_path) == [tmp.name]  # removed on entry
        folder(tmp / "sub", "x")
        for name in ("a.txt", "b.txt"):
            (tmp / name).write_text("newer")
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "b.txt", "sub"]
    assert hidden(tmp_path) == []


def exchange_works(tmp_path: Path) -> bool:
    a, b = tmp_path / "xa", tmp_path / "xb"
    a.mkdir()
    b.mkdir()
    try:
        return safe_io._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


def test_a_writer_killed_right_after_the_atomic_swap_leaves_the_new_folder(tmp_path):
    if not exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    dest = folder(tmp_path / "model", "old")
    killed_writer("folder", dest, "new", "after-exchange")
    assert_complete(dest, "new")
    (leftover,) = hidden(tmp_path)  # the old folder, under the killed writer's temporary name
    assert_complete(tmp_path / leftover, "old")
    with safe_io.staged_folder(dest, replace=True) as tmp:
        folder(tmp / "x", "y")
    assert hidden(tmp_path) == []


def test_replace_folder_without_the_atomic_swap(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_io, "_exchange", lambda a, b: False)
    dest = folder(tmp_path / "model", "old")
    with safe_io.staged_folder(dest, replace=True) as tmp:
        for name in ("a.txt", "b.txt"):
            (tmp / name).write_text("new")
    assert_complete(dest, "new")
    assert hidden(tmp_path) == []


def test_an_interrupt_between_the_two_renames_puts_a_complete_folder_back_at_once(tmp_path, monkeypatch):
    """Without the atomic swap the old folder is first renamed aside: an exception right then
    (a KeyboardInterrupt) must not leave the destination missing."""
    monkeypatch.setattr(safe_io, "_exchange", lambda a, b: False)
    dest = folder(tmp_path / "model", "old")
    real_rename = Path.rename

    def rename(self, target):
        result = real_rename(self, target)
        if self == dest:
            raise Killed()
        return result

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(Killed), safe_io.staged_folder(dest, replace=True) as tmp:
        for name in ("a.txt", "b.txt"):
            (tmp / name).write_text("new")
    monkeypatch.setattr(Path, "rename", real_rename)
    assert_complete(dest, "new")
    with safe_io.staged_folder(dest, replace=True) as tmp:  # the next writer removes the old folder
        for name in ("a.txt", "b.txt"):
            (tmp / name).write_text("newer")
    assert_complete(dest, "newer")
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("recovered_by", ["recover_folder", "staged_folder"])
def test_a_kill_between_the_two_renames_is_recovered(tmp_path, recovered_by):
    """Killed with the old folder renamed aside and the new one not yet in place: a reader
    (:func:`recover_folder`) or the next writer puts the complete new folder at ``dest``, and the
    next writer leaves nothing behind, whether or not the atomic swap is available to it."""
    dest = folder(tmp_path / "model", "old")
    killed_writer("folder", dest, "new", "between-renames")
    assert not dest.exists()
    assert hidden(tmp_path) == [".model.new", ".model.old"]
    if recovered_by == "recover_folder":
        assert safe_io.recover_folder(dest)
        assert_complete(dest, "new")
        assert not safe_io.recover_folder(dest)
    with safe_io.staged_folder(dest, replace=True) as tmp:
        if recovered_by == "staged_folder":
            assert_complete(dest, "new")  # put back on entry
        for name in ("a.txt", "b.txt"):
            (tmp / name).write_text("newer")
    assert_complete(dest, "newer")
    assert hidden(tmp_path) == []


# --------------------------------------------------------------------------------------
# 3. Model export: killed during --force, after each file-system step of the replacement
# --------------------------------------------------------------------------------------

from test_mt_api import exported  # noqa: E402,F401  (the trained tiny model, its data and export)


def in_forked_process(body, what: str) -> bool:
    """Run ``body()`` in a forked process (which may kill itself with SIGKILL); True when it was
    killed, False when it finished (it must not fail otherwise)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            body()
            os._exit(0)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(3)
    deadline = time.time() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"{what} hung")
        time.sleep(0.05)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, f"{what} failed"
        return False
    assert os.WTERMSIG(status) == signal.SIGKILL
    return True


def export_killed_at(export, step: int | str, ckpt: Path, data: Path, out: Path, exchange: bool) -> bool:
    """Run ``export(ckpt, data, out, force=True)`` (``scripts/export_model.py``) in a forked
    process killed with SIGKILL right after the ``step``-th file-system change beside ``out`` (a rename, an exchange,
    a folder deletion), or in the middle of writing ``model.pt`` (``step="model.pt"``); without
    the atomic swap unless ``exchange``. Returns False when the export finished before that step."""

    def body() -> None:
        import shutil

        import torch

        steps = [0]

        def changed(*paths) -> None:
            if any(Path(p).parent == out.parent for p in paths):
                steps[0] += 1
                if steps[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)

        real_rename, real_replace, real_rmtree, real_exchange = os.rename, os.replace, shutil.rmtree, safe_io._exchange
        real_save = torch.save

        def rename(a, b, *args, **kwargs):
            real_rename(a, b, *args, **kwargs)
            changed(a, b)

        def replace(a, b, *args, **kwargs):
            real_replace(a, b, *args, **kwargs)
            changed(a, b)

        def rmtree(path, *args, **kwargs):
            existed = os.path.lexists(path)
            real_rmtree(path, *args, **kwargs)
            if existed:
                changed(path)

        def swap(a, b):
            if not exchange or not real_exchange(a, b):
                return False
            changed(a, b)
            return True

        def save(obj, f, *args, **kwargs):
            if step == "model.pt" and Path(f).name == "model.pt":
                Path(f).write_bytes(b"PK\x03\x04 half a model")
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f, *args, **kwargs)

        os.rename, os.replace, shutil.rmtree, safe_io._exchange, torch.save = rename, replace, rmtree, swap, save
        export(ckpt, data, out, force=True)

    return in_forked_process(body, f"the export to be killed at step {step}")


MODEL_FILES = ["README.md", "dict.de.txt", "dict.en.txt", "model.pt", "model_card.json", "sentencepiece.bpe.model"]


def model_in(out: Path) -> str:
    """The checkpoint the complete model folder ``out`` was exported from."""
    import torch

    assert out.is_dir(), f"{out} is missing"
    assert sorted(p.name for p in out.iterdir()) == MODEL_FILES
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert state["model"]
    (checkpoint,) = json.loads((out / "model_card.json").read_text())["checkpoints"]
    return Path(checkpoint).name


@pytest.mark.slow
@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-swap", "two-renames"])
def test_export_force_killed_at_any_point_keeps_a_complete_model(exported, tmp_path, exchange):  # noqa: F811
    if exchange and not exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    from scripts import export_model  # the user script, imported to be killed mid-way in a fork
    export = export_model.export
    ckpt, data = exported["ckpt"], exported["data"]
    old, new = ckpt / "checkpoint_best.pt", ckpt / "checkpoint_last.pt"
    out = tmp_path / "models" / "model"
    export(old, data, out)
    steps = ["model.pt", *range(1, 20)]
    for step in steps:
        if not export_killed_at(export, step, new, data, out, exchange):
            break
        if not exchange:  # a reader (or the next writer) finishes the two renames
            from resmlp_mt import ResMLPTranslationModel

            assert ResMLPTranslationModel.from_pretrained(out).translate(["A dog runs."], beam=1)
        assert model_in(out) in (old.name, new.name), f"killed at step {step}"
        if step == "model.pt":
            assert model_in(out) == old.name
        # the next export cleans up after the killed one
        export(old, data, out, force=True)
        assert model_in(out) == old.name
        assert hidden(out.parent) == [], f"killed at step {step}"
    else:
        pytest.fail(f"the export did not finish within {len(steps) - 1} steps")
    assert step != 1, "no step was killed"
    assert model_in(out) == new.name
    assert hidden(out.parent) == []
    # and without --force an existing model is kept, with the error
    with pytest.raises(export_model.ExportError, match="exists: pass --force"):
        export(new, data, out)
    assert model_in(out) == new.name


# --------------------------------------------------------------------------------------
# 4. Prepared data: a preparation killed midway
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prepare_force_killed_midway_keeps_the_old_data_and_the_next_run_cleans_up(tmp_path):
    from helpers import write_corpus

    from scripts.prepare_multi30k import main as prepare
    root = tmp_path / "data-bin"
    dest = root / "multi30k.en-de"

    def run(raw: Path, *flags: str) -> int:
        return prepare(["--raw-dir", str(raw), "--destdir-root", str(root), "--vocab-size", "120", "--workers", "1",
                        *flags])

    assert run(write_corpus(tmp_path / "raw")) == 0
    before = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}
    other = write_corpus(tmp_path / "raw2", seed=1)

    def killed_at_binarization() -> None:
        real_run = subprocess.run

        def run_or_die(cmd, *args, **kwargs):
            if "fairseq_cli.preprocess" in cmd:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_run(cmd, *args, **kwargs)

        subprocess.run = run_or_die
        run(other, "--force")

    assert in_forked_process(killed_at_binarization, "the preparation to be killed")
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()} == before
    assert len(hidden(root)) == 1  # the half-built folder
    assert run(other, "--force") == 0
    assert hidden(root) == []
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()} != before
