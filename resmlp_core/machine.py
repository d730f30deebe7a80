"""What a benchmark or report was measured on: one description of the machine for both halves."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch


def cpu_name() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it (else ``platform.processor()``, else ``"unknown"``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: Optional[torch.device] = None, packages: Sequence[str] = ()) -> Dict[str, Any]:
    """Platform, CPU, cores, Python and torch versions, the ``__version__`` of each of
    ``packages`` (e.g. ``("fairseq",)``, ``("timm", "numpy")``) and the GPU (that of ``device``
    when given, else the first CUDA device if any). With ``device``, also the device, torch's
    thread count and the CPU's bf16 support and vector capability."""
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
