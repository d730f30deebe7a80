"""Timing primitives shared by ``vision.evaluate`` and the vision benchmarks: the device's
synchronisation, one call's seconds, a matmul's GFLOP/s (the peak a model's figure is compared
with), a model's FLOPs, and interleaved rounds of several timed calls (so that a slow spell hits
all of them)."""

from __future__ import annotations

import time
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.utils.benchmark import Timer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    """Sustained GFLOP/s of an ``n x n`` by ``n x n`` matmul: the best block of
    ``torch.utils.benchmark.Timer.blocked_autorange`` over ``seconds``, at the process's threads."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    timer = Timer("torch.mm(a, b, out=c)", globals={"torch": torch, "a": a, "b": b, "c": c},
                  num_threads=torch.get_num_threads())
    best = min(timer.blocked_autorange(min_run_time=seconds).times)
    return 2 * n**3 / best / 1e9


def one_call_seconds(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn`` after ``torch.utils.benchmark.Timer``'s warm-up calls, at the
    process's threads (the device synchronised around it)."""
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(1).mean


def count_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward (matmuls and convolutions; multiply-add = 2), per image."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / x.shape[0]


def interleaved(fns: Dict[str, Callable[[], None]], rounds: int, device: torch.device) -> Dict[str, List[float]]:
    """Seconds per call of each function, one call of each per round, after one warm-up call.

    Written out rather than through ``torch.utils.benchmark.Timer``: a Timer measures one
    statement's calls back to back (and warms up before each measurement), while a comparison
    wants the candidates alternated, so that a slow spell of the machine hits all of them."""
    for fn in fns.values():
        fn()
    _sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times
