"""What every study shares: the machine it was measured on, and results files free of its folders.

* :func:`machine_info`, :func:`cpu_name`: one description of the machine for both halves
  (:func:`machine_cores`: its core count, also from results files of older versions);
* :func:`repo_relative`: every absolute path in a string (or in the strings of nested dicts and
  lists) made relative to the repository, so that a results file read on another machine names
  no folder of the one that wrote it (``/work/repo/data-bin/x`` -> ``data-bin/x``,
  ``/tmp/run`` -> ``../../tmp/run``); system locations (``/usr``, ``/opt``, ...) stay absolute;
* :func:`parse_fairseq_log`: the lines of a fairseq log (``--log-format json`` or ``simple``) as
  (time, logger, message), and the JSON records among them; the one parser of fairseq's logs;
* :func:`read_checkpoint`: a checkpoint read through the project's safe loader (weights only);
* :func:`write_result`: a results file (JSON or markdown text) written atomically through
  :func:`repo_relative`, the one way the studies write ``results/``;
* :func:`training_minutes`: the argparse type of a training-minutes budget (a number >= 0).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import json
import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

from resmlp_core.io import write_text_atomic

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
#: Absolute paths that name the installation, not a user's folders: kept as they are.
SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/", "/etc/", "/proc/", "/sys/", "/dev/")
#: An absolute path: a "/" that starts a token (not inside a word, a relative path or a URL) and
#: the characters up to the next space, quote, bracket, separator, backslash (a JSON escape) or
#: markup character.
_ABSOLUTE_PATH = re.compile(r"(?<![A-Za-z0-9_.~/\\-])/(?!/)[^\s\"'`,;:|()\[\]{}<>=*\\]+")


def repo_relative(x: Any, root: Union[str, os.PathLike, None] = None) -> Any:
    """``x`` with every absolute path in its strings made relative to ``root`` (the repository by
    default), in nested dicts (keys too), lists and tuples; other values unchanged."""
    root = os.path.abspath(root if root is not None else REPO)

    def one(match: "re.Match[str]") -> str:
        path = match.group(0)
        if path.startswith(SYSTEM_PREFIXES):
            return path
        tail = "/" if path.endswith("/") and len(path) > 1 else ""
        return os.path.relpath(path, root) + tail

    if isinstance(x, str):
        return _ABSOLUTE_PATH.sub(one, x)
    if isinstance(x, dict):
        return {repo_relative(k, root): repo_relative(v, root) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [repo_relative(v, root) for v in x]
    return x


def drop_options(argv: Sequence[str], options: Dict[str, object]) -> list:
    """``argv`` without ``options`` (``{"--name": values}``: ``False`` for a flag, ``True`` for one
    value, ``"+"`` for one or more, up to the next ``-``-option), written ``--name value ...``,
    ``--name=value`` or, for a flag, ``--name``: e.g. a benchmark's command line without the options
    that only choose what runs in this call, to record as the command that reproduces its results."""
    kept, values = [], 0  # values of a dropped option still to skip (None: every one up to the next option)
    for arg in argv:
        if values is None and arg.startswith("-"):
            values = 0
        if values is None:
            continue
        if values:
            values -= 1
        elif arg in options:
            values = {False: 0, True: 1, "+": None}[options[arg]]
        elif not any(arg.startswith(name + "=") for name, value in options.items() if value):
            kept.append(arg)
    return kept


def training_minutes(text: str) -> float:
    """argparse type of a training-minutes budget: a finite number >= 0 (0: a curve run stops at
    its first evaluation), else argparse's error naming the flag."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: minutes must be a finite number >= 0")
    return value


def cli_path(text: str) -> Path:
    """An argparse ``type`` for a path flag: the path made absolute against the caller's current
    folder. The studies run their trainings and tools with the repository as working folder, so a
    relative path kept as given would name one place in this process and another in its children."""
    return Path(text).expanduser().absolute()


def write_result(path: Union[str, os.PathLike], text: str) -> None:
    """Write a results file (``text``: JSON or markdown) atomically, its absolute paths made
    relative to the repository by :func:`repo_relative`."""
    write_text_atomic(path, repo_relative(text))


def cpu_name() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it (else ``platform.processor()``, else ``"unknown"``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_cores(machine: Dict[str, Any]) -> Optional[int]:
    """The core count of a :func:`machine_info` dict; results files written before it was named
    ``cores`` call it ``cpu_count``."""
    return machine.get("cores", machine.get("cpu_count"))


def git_state() -> Dict[str, Any]:
    """The repository's commit (``git_commit``) and whether tracked files differ from it
    (``git_dirty``); empty where git cannot say (no git, not a clone)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True)
    except OSError:
        return {}
    if commit.returncode != 0:
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def machine_info(device: Optional[torch.device] = None, packages: Sequence[str] = ()) -> Dict[str, Any]:
    """Platform, CPU, cores, Python and torch versions, the ``__version__`` of each of
    ``packages`` (e.g. ``("fairseq",)``, ``("timm", "numpy")``) and the GPU (that of ``device``
    when given, else the first CUDA device if any). With ``device``, also the device, torch's
    thread count and the CPU's bf16 support and vector capability."""
    import torch

    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: importlib.import_module(name).__version__ for name in packages},
    }
    if device is None:
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return info
    info.update(
        torch_threads=torch.get_num_threads(),
        device=str(device),
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        cpu_native_bf16=bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
    return info


def read_checkpoint(path: Union[str, os.PathLike], mmap: bool = False) -> Dict[str, Any]:
    """A checkpoint (a dict saved by ``torch.save``, or ``.safetensors``) read through the
    project's safe loader, :func:`vision.checkpoint.load`: weights only, no code unpickled, an
    error naming the file for anything else; ``mmap=True`` maps the tensors (cheap metadata
    reads). A fairseq checkpoint needs ``resmlp_mt`` imported first (it allows fairseq's
    ``Namespace`` in weights-only loading)."""
    from vision.checkpoint import load

    return load(path, mmap=mmap)


# --- fairseq's logs -------------------------------------------------------------------------------

#: One line of fairseq's log: ``2024-01-01 12:00:00 | INFO | train_inner | {"epoch": 1, ...}``.
_FAIRSEQ_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| (\w+) \| ([\w.]+) \| (.*)$")


class FairseqLogLine(NamedTuple):
    """A line of fairseq's log: ``time`` (seconds since the epoch, from the log's timestamp),
    ``level`` (INFO, WARNING, ...), ``logger`` (``train_inner``, ``valid``, ``fairseq.trainer``,
    ...), ``message``; ``record``: the message as a dict when it is a JSON record
    (``--log-format json``), else None."""

    time: float
    level: str
    logger: str
    message: str
    record: Optional[dict]


def parse_fairseq_log(lines: Union[str, Iterable[str]]) -> Iterator[FairseqLogLine]:
    """The lines of a fairseq log (its text, or its lines one by one as they come) that carry a
    timestamp, parsed; other lines (progress bars, tracebacks) are skipped."""
    for line in lines.splitlines() if isinstance(lines, str) else lines:
        match = _FAIRSEQ_LINE.match(line.rstrip("\n"))
        if not match:
            continue
        message, record = match.group(4), None
        if message.startswith("{"):
            try:
                record = json.loads(message)
            except json.JSONDecodeError:
                pass
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
        yield FairseqLogLine(when, match.group(2), match.group(3), message, record)
