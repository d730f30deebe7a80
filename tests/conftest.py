"""Shared test fixtures.

The real-data tests read ``../shared/data`` (or ``$RESMLP_DATA``). Where it is absent they are
skipped with a reason, except when ``RESMLP_REQUIRE_DATA=1`` (set by ``.ci/run``), where a
missing folder fails the run instead of silently skipping.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RESMLP_DATA", REPO.parent / "shared" / "data"))

# One thread per test worker, and for every command a test starts: the suite runs 2 workers
# on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
except ImportError:  # pragma: no cover
    pass


def _data_dir(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        msg = f"real data folder {path} not found (set RESMLP_DATA to the folder holding {name}/)"
        if os.environ.get("RESMLP_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    return _data_dir("multi30k")


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    return _data_dir("cifar10")


@pytest.fixture(scope="session")
def imagenet_sample_dir() -> Path:
    return _data_dir("imagenet-sample")


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The folder of the running interpreter's console scripts (fairseq-train, ...)."""
    return Path(sys.executable).parent


# The longest test files first. `make test` runs two workers with `--dist loadfile
# --no-loadscope-reorder`: a file goes whole to the next free worker, in collection order, so a
# long file collected last keeps one worker busy while the other has nothing left (xdist's own
# reordering, by number of tests, puts the long one-test CLI studies last). Seconds of one file on
# one worker of the idle 2-core machine (`--durations=0`, summed per file); unlisted files follow
# in their usual order.
LONGEST_FIRST = {
    "test_mt_distill.py": 285,
    "test_vision_dino.py": 240,
    "test_race_mt.py": 205,
    "test_mt_token_mixers.py": 200,
    "test_drills_checkpoints.py": 175,
    "test_mt_bench.py": 155,
    "test_mt_cli.py": 140,
    "test_mt_api.py": 115,
    "test_gpu_race.py": 115,
    "test_bench_decode.py": 100,
    "test_gpu_acceptance.py": 85,
    "test_vision_train.py": 60,
}


def pytest_collection_modifyitems(config, items):
    order = {name: i for i, name in enumerate(sorted(LONGEST_FIRST, key=LONGEST_FIRST.get, reverse=True))}
    items.sort(key=lambda item: order.get(Path(str(item.fspath)).name, len(order)))  # stable: in-file order kept


# Seconds per test file (setup, call and teardown of its tests, on the worker that ran it), summed
# from the reports the controller receives; `make test` prints the longest after its --durations,
# so that LONGEST_FIRST can be checked against a measured run.
FILE_SECONDS: dict = {}


def pytest_runtest_logreport(report):
    name = Path(report.nodeid.split("::")[0]).name
    FILE_SECONDS[name] = FILE_SECONDS.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput") or not FILE_SECONDS:  # an xdist worker: its controller prints
        return
    longest = sorted(FILE_SECONDS.items(), key=lambda kv: kv[1], reverse=True)[:15]
    total = sum(FILE_SECONDS.values())
    terminalreporter.write_sep("=", f"longest test files ({len(FILE_SECONDS)} files, {total:.0f} s in all, "
                                    "each on one worker)")
    for name, seconds in longest:
        listed = f"LONGEST_FIRST {LONGEST_FIRST[name]} s" if name in LONGEST_FIRST else "not in LONGEST_FIRST"
        terminalreporter.write_line(f"{seconds:8.1f} s  {name}  ({listed})")
