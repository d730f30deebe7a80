"""What the GPU studies share: processes bound by a deadline, the machine's speed, the data.

* :func:`run_logged` runs a command in its own process group, its output in a log file, and
  kills the group when its time is up; :func:`base_env` is the environment of every child.
* :func:`measure_slowdown` times a fixed single-core workload and reads the load average: a
  rehearsal on the CPU (``--dry-run``) multiplies its time budgets by the factor it returns, so
  that a busy or slow machine does not fail a rehearsal sized for an idle one.
* :func:`find_data_root`, :func:`data_ready`, :func:`slice_raw`, :func:`prepare_command`: the
  raw Multi30k and its binarized form (``scripts/prepare_multi30k.py``).
* :func:`machine_info`: versions and the GPU as ``nvidia-smi`` reports it (no CUDA context).
* :class:`Checks`: named assertions with their measured values, thresholds and statuses.
* :func:`log`, :func:`fmt`, :func:`json_safe`, :func:`scrub_paths`: progress lines with the
  clock and the seconds since the start, numbers for tables, strict JSON, and reports free of
  this machine's absolute paths.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

REPO = Path(__file__).resolve().parents[1]
T0 = time.monotonic()

#: Seconds of :func:`_python_workload` on one idle core of the 2-core AMD EPYC bench machine
#: (the fastest of 15 rounds); a machine as fast and idle gets a slowdown of 1.
REFERENCE_WORKLOAD_S = 0.05
#: The largest factor a rehearsal's budgets are stretched by.
MAX_SLOWDOWN = 8.0


def start_clock() -> None:
    """Start the run's clock: :func:`elapsed` (deadlines, log times) counts from here. A run
    calls it when it starts, not at import: a process may import a study long before it runs it
    (a test session does)."""
    global T0
    T0 = time.monotonic()


def elapsed() -> float:
    """Seconds since the run started (:func:`start_clock`; the import, before that)."""
    return time.monotonic() - T0


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')} +{elapsed():6.1f}s] {msg}", flush=True)


def finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.1f}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def json_safe(x: Any) -> Any:
    """Strict JSON: a non-finite float becomes the string "nan", "inf" or "-inf"."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def scrub_paths(x: Any, names: Mapping[str, str]) -> Any:
    """``x`` with every occurrence of each absolute path in ``names`` (longest first) replaced by
    its name there, in every string of nested dicts and lists: a report names ``<workdir>/...``
    or repo-relative paths, never this machine's folders."""
    order = sorted(((str(k), v) for k, v in names.items() if str(k)), key=lambda kv: -len(kv[0]))

    def one(s: str) -> str:
        for path, name in order:
            s = s.replace(path + os.sep, name + "/" if name else "").replace(path, name or ".")
        return s

    if isinstance(x, str):
        return one(x)
    if isinstance(x, dict):
        return {one(str(k)): scrub_paths(v, names) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [scrub_paths(v, names) for v in x]
    return x


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

NOT_SELECTED = "not selected (--stages)"


class Checks:
    """Named assertions, declared up front (so the report lists every one even when its stage
    did not run), each with a measured value, a threshold and a status: pass, fail, n/a
    (a GPU goal in a dry run), skipped (its stage did not run) or not selected (its stage was
    left out with ``--stages``; not a failure)."""

    def __init__(self) -> None:
        self.items: Dict[str, Dict[str, Any]] = {}

    def declare(self, name: str, section: str, stage: str, threshold: str, kind: str = "check") -> None:
        self.items[name] = {
            "name": name,
            "section": section,
            "stage": stage,
            "kind": kind,
            "threshold": threshold,
            "value": None,
            "status": None,
            "note": "",
        }

    def set(
        self, name: str, value: Any, passed: Optional[bool], note: str = "", threshold: Optional[str] = None
    ) -> None:
        item = self.items[name]
        item["value"] = value
        item["status"] = "n/a" if passed is None else ("pass" if passed else "fail")
        if note:
            item["note"] = note
        if threshold is not None:
            item["threshold"] = threshold
        log(
            f"check {name}: {item['status']} (value {fmt(value)}, threshold {item['threshold']})"
            + (f" [{note}]" if note else "")
        )

    def finalize(self, stages: Dict[str, Dict[str, Any]]) -> None:
        for item in self.items.values():
            if item["status"] is None:
                stage = stages.get(item["stage"], {})
                status = stage.get("status", "not run")
                item["status"] = "not selected" if status == NOT_SELECTED else "skipped"
                item["note"] = f"stage {item['stage']}: {status}" + (
                    f" ({stage['error']})" if stage.get("error") else ""
                )

    def failed(self, strict_goals: bool) -> List[str]:
        return [
            i["name"]
            for i in self.items.values()
            if i["status"] in ("fail", "skipped") and (i["kind"] == "check" or strict_goals)
        ]


# ----------------------------------------------------------------------------------------------
# The machine's speed
# ----------------------------------------------------------------------------------------------


def _python_workload(n: int = 1_000_000) -> float:
    """Seconds of a fixed pure-Python loop: what the rehearsals mostly wait for (interpreter
    start-up and imports of torch and fairseq) is single-core Python work like it."""
    start = time.perf_counter()
    s = 0
    for i in range(n):
        s += i * i % 7
    return time.perf_counter() - start


def measure_slowdown(rounds: int = 5) -> Dict[str, Any]:
    """How much slower than the idle bench machine this one runs now, from two measures: the
    median of ``rounds`` timings of a fixed single-core workload against
    :data:`REFERENCE_WORKLOAD_S`, and the 1-minute load average per core (a load of 4 on 2 cores
    gives each process about half a core). ``factor`` is the larger of the two, at least 1 and at
    most :data:`MAX_SLOWDOWN`. About 0.3 s on an idle machine."""
    times = [_python_workload() for _ in range(rounds)]
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        load = 0.0
    workload = statistics.median(times) / REFERENCE_WORKLOAD_S
    per_core = load / cores
    factor = min(MAX_SLOWDOWN, max(1.0, workload, per_core))
    return {
        "factor": round(factor, 2),
        "workload_ratio": round(workload, 2),
        "load_per_core": round(per_core, 2),
        "load_average_1min": round(load, 2),
        "cores": cores,
        "workload_s": [round(t, 4) for t in times],
        "reference_workload_s": REFERENCE_WORKLOAD_S,
    }


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------


def base_env(mode: str) -> dict:
    """The environment of every child: the repo first on ``PYTHONPATH`` (no install needed); in
    a dry run one thread and no GPU, on the GPU one device (fairseq-train would otherwise start
    one process per visible GPU)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if mode == "dry-run":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    return env


def run_logged(
    cmd: List[Any], log_path: Path, timeout: float, env: Optional[dict] = None, what: str = ""
) -> Dict[str, Any]:
    """Run ``cmd`` in its own process group, output to ``log_path``; kill the group after
    ``timeout`` seconds. Prints a heartbeat with the log's last line every 20 s."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(map(str, cmd)) + "\n")
        fh.flush()
        proc = subprocess.Popen(
            [str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
        timed_out, last_beat = False, start
        while proc.poll() is None:
            now = time.monotonic()
            if now - start > timeout:
                timed_out = True
                kill_group(proc)
                break
            if now - last_beat >= 20:
                last_beat = now
                log(f"  {what or Path(str(cmd[0])).name} running {now - start:.0f}s: {last_line(log_path)[:150]}")
            time.sleep(0.5)
    seconds = time.monotonic() - start
    return {"returncode": proc.returncode, "seconds": round(seconds, 1), "timed_out": timed_out, "log": str(log_path)}


def kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4000))
            lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""
    except OSError:
        return ""


def tail(path: Path, n: int = 2500) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return text[-n:]


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def find_data_root(given: Optional[str]) -> Optional[Path]:
    """The folder holding ``multi30k/`` (and ``cifar10/``): ``given``, else ``$RESMLP_DATA``, else
    ``../shared/data`` or ``shared/data`` next to the repo."""
    candidates = [given, os.environ.get("RESMLP_DATA"), REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c).resolve()
    return None


def data_ready(data: Path) -> bool:
    """Whether ``data`` is a complete binarized Multi30k En-De of ``scripts/prepare_multi30k.py``."""
    needed = [
        "prep.json",
        "dict.en.txt",
        "dict.de.txt",
        "train.en-de.en.bin",
        "valid.en-de.en.bin",
        "test.en-de.de.bin",
        "ref/test.de",
        "ref/valid.de",
    ]
    return all((data / n).exists() for n in needed)


def slice_raw(raw: Path, dest: Path, sizes: Dict[str, int]) -> Path:
    """The first ``sizes[split]`` lines of each raw ``split.{en,de}`` copied to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, n in sizes.items():
        for lang in ("en", "de"):
            with open(raw / f"{name}.{lang}", encoding="utf-8") as fh:
                lines = [next(fh, "") for _ in range(n)]
            (dest / f"{name}.{lang}").write_text("".join(lines), encoding="utf-8")
    return dest


def prepare_command(raw: Path, data: Path, vocab_size: int, workers: int) -> List[str]:
    """``scripts/prepare_multi30k.py`` binarizing the raw En-De text of ``raw`` into ``data``
    (whose name must be ``multi30k.en-de``)."""
    return [
        sys.executable,
        str(REPO / "scripts" / "prepare_multi30k.py"),
        "--raw-dir",
        str(raw),
        "--pairs",
        "en-de",
        "--destdir-root",
        str(data.parent),
        "--vocab-size",
        str(vocab_size),
        "--workers",
        str(workers),
        "--force",
    ]


# ----------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------


def machine_info(mode: str) -> Dict[str, Any]:
    """Versions and the GPU as nvidia-smi reports it (the caller never opens a CUDA context)."""
    import torch

    info: Dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    from benchmarks.common import cpu_name

    info["cpu"] = cpu_name()
    from importlib.metadata import PackageNotFoundError, version

    for pkg, dists in (
        ("fairseq", ("ve-fairseq", "fairseq")),
        ("timm", ("timm",)),
        ("torchvision", ("torchvision",)),
        ("sacrebleu", ("sacrebleu",)),
    ):
        info[pkg] = None
        for dist in dists:
            try:
                info[pkg] = version(dist)
                break
            except PackageNotFoundError:
                continue
    if shutil.which("nvidia-smi"):
        try:
            out = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                .stdout.strip()
                .splitlines()
            )
            if out:
                name, driver, mem = [s.strip() for s in out[0].split(",")][:3]
                info.update(gpu_name=name, driver=driver, gpu_memory=mem, gpu_count=len(out))
        except Exception as err:
            info["nvidia_smi_error"] = str(err)
    if mode == "dry-run":
        info.setdefault("gpu_name", None)
        info.setdefault("driver", None)
    return info
