"""Speed of our ResMLP (unfolded and folded) against timm's ``resmlp_12_224`` / ``resmlp_24_224``.

    python -m benchmarks.bench_vision                       # full run, writes results/bench_vision.{json,md}
    python -m benchmarks.bench_vision --quick --out /tmp/b  # seconds: tiny sizes, for the test suite

One process, the same random weights for every variant (timm's model loads our state dict):

* inference images/s at batch 1, 32 and 64 (eval mode, ``torch.inference_mode``);
* training step images/s at batch 32 (train mode, drop path 0.05, cross-entropy, backward,
  LAMB step);
* the machine's measured fp32 matmul GFLOP/s, and each model's achieved GFLOP/s and its share
  of that figure (model FLOPs counted by ``torch.utils.flop_counter``, multiply-add = 2).

Timings are interleaved (one call of every variant per round) and reported as the median
over rounds, so a disturbance hits all variants alike. fp32 on the CPU; bf16 autocast on
CUDA, and on a CPU only where oneDNN reports native bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from benchmarks.common import machine_cores, machine_info, write_result
from vision.speed import count_flops, interleaved, matmul_gflops, one_call_seconds

SIZES = {"S12": ("resmlp_s12", "resmlp_12_224"), "S24": ("resmlp_s24", "resmlp_24_224")}


def bench_size(size: str, args, device: torch.device, peak: float, autocast_dtype) -> Dict[str, Any]:
    import timm
    from timm.optim import create_optimizer_v2
    from timm.utils import reparameterize_model

    import vision  # noqa: F401  (registers our models)

    ours_name, timm_name = SIZES[size]
    kw = dict(img_size=args.img_size)
    if args.quick:
        kw.update(depth=2, embed_dim=64)
    torch.manual_seed(0)
    ours = timm.create_model(ours_name, **kw).to(device).eval()
    ref = _timm_model(timm_name, ours, args).to(device).eval()
    folded = reparameterize_model(ours)
    variants = {"timm": ref, "ours": ours, "ours_folded": folded}
    if args.compile:
        variants.update({f"{k}_compiled": torch.compile(v) for k, v in list(variants.items())})

    x1 = torch.randn(1, 3, args.img_size, args.img_size, device=device)
    flops = count_flops(ours, x1)
    with torch.no_grad():
        ref_out, out, fold_out = ref(x1), ours(x1), folded(x1)
    result: Dict[str, Any] = {
        "ours": ours_name,
        "timm": timm_name,
        "params": sum(p.numel() for p in ours.parameters()),
        "gflops_per_image": flops / 1e9,
        "max_abs_diff_ours_vs_timm": (out - ref_out).abs().max().item(),
        "max_abs_diff_folded_vs_ours": (fold_out - out).abs().max().item(),
        "inference": {},
        "train_step": {},
    }

    def record(kind: str, key: str, batch: int, times: Dict[str, List[float]], flops_per_img: float) -> None:
        entry: Dict[str, Any] = {}
        for name, ts in times.items():
            med = statistics.median(ts)
            ips = batch / med
            entry[name] = {
                "img_per_s": ips,
                "median_s": med,
                "runs_s": ts,
                "gflop_per_s": ips * flops_per_img / 1e9,
                "share_of_matmul_peak": ips * flops_per_img / 1e9 / peak,
            }
        for name in times:
            if name != "timm" and "timm" in entry:
                base = "timm_compiled" if name.endswith("_compiled") and "timm_compiled" in entry else "timm"
                entry[name][f"speedup_vs_{base}"] = entry[name]["img_per_s"] / entry[base]["img_per_s"]
        result[kind][key] = entry

    ctx = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else nullcontext
    precision = str(autocast_dtype).replace("torch.", "") if autocast_dtype else "float32"
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
        # Small batches are fast: repeat the call so one timing is not a few microseconds.
        with torch.inference_mode():
            one_call = one_call_seconds(lambda: ours(x))
        reps = max(1, int(args.target_call_s / max(1e-4, one_call)))

        def make(m: nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode(), ctx():
                    for _ in range(reps):
                        m(x)

            return run

        times = interleaved({k: make(m) for k, m in variants.items()}, args.rounds, device)
        record("inference", f"{precision}_batch{batch}", batch * reps, times, flops)
        print(_line(size, f"inference {precision} batch {batch}", result["inference"][f"{precision}_batch{batch}"]),
              flush=True)

    # Training step: forward, loss, backward, optimizer step; fresh train-mode copies.
    batch = args.train_batch
    x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    steps = {}
    for name in ("timm", "ours"):
        m = timm.create_model(ours_name, **kw, drop_path_rate=0.05)
        m.load_state_dict(ours.state_dict())
        if name == "timm":
            m = _timm_model(timm_name, m, args)
        m = m.to(device).train()
        opt = create_optimizer_v2(m, opt="lamb", lr=1e-6, weight_decay=0.2)
        loss_fn = nn.CrossEntropyLoss()

        def step(m=m, opt=opt) -> None:
            with ctx():
                loss = loss_fn(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    times = interleaved(steps, args.train_rounds, device)
    record("train_step", f"{precision}_batch{batch}", batch, times, 3 * flops)
    print(_line(size, f"train step {precision} batch {batch}", result["train_step"][f"{precision}_batch{batch}"]),
          flush=True)
    return result


def _timm_model(timm_name: str, ours: nn.Module, args) -> nn.Module:
    """timm's registered model (``resmlp_12_224``, ...) with ``ours``'s weights and drop path;
    with ``--quick``, timm's ``MlpMixer`` built at our tiny size (:func:`vision.reference.timm_reference`)."""
    import timm

    from vision.reference import timm_reference

    if args.quick:
        return timm_reference(ours)
    ref = timm.create_model(timm_name, img_size=args.img_size, drop_path_rate=ours.blocks[0].drop_path_rate)
    ref.load_state_dict(ours.state_dict())
    return ref.train(ours.training)



def _line(size: str, what: str, entry: Dict[str, Any]) -> str:
    parts = [f"{k} {v['img_per_s']:.1f} img/s" + (f" (x{v['speedup_vs_timm']:.2f})" if "speedup_vs_timm" in v else "")
             for k, v in entry.items()]
    return f"{size} {what}: " + ", ".join(parts)


def markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# ResMLP vision benchmark: ours (unfolded, folded) vs timm",
        "",
        f"Machine: {m['cpu']} ({machine_cores(m)} cores, {m['torch_threads']} torch threads), device {m['device']}"
        + (f" ({m['gpu']})" if m["gpu"] else " (no GPU on this machine)")
        + f"; torch {m['torch']}, timm {m['timm']}, Python {m['python']}.",
        f"Measured fp32 matmul: {report['matmul_gflops_fp32']:.1f} GFLOP/s ({report['settings']['matmul_n']}^3). "
        f"bf16: {report.get('bf16_note', '')}",
        f"Command: `{report['command']}`",
        "",
        "img/s (median of interleaved rounds); speed-up vs timm in the same run; "
        "share = achieved GFLOP/s / measured matmul GFLOP/s.",
        "",
        "| model | measurement | timm img/s | ours img/s | ours folded img/s | ours / timm | folded / timm | "
        "timm share | folded share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, res in report["results"].items():
        for kind in ("inference", "train_step"):
            for key, entry in res[kind].items():
                t, o = entry["timm"], entry["ours"]
                f = entry.get("ours_folded")
                lines.append(
                    f"| {size} | {kind.replace('_', ' ')} {key.replace('_', ' ')} "
                    f"| {t['img_per_s']:.1f} | {o['img_per_s']:.1f} | "
                    + (f"{f['img_per_s']:.1f}" if f else "-")
                    + f" | {o['speedup_vs_timm']:.2f}x | "
                    + (f"{f['speedup_vs_timm']:.2f}x" if f else "-")
                    + f" | {100 * t['share_of_matmul_peak']:.0f}% | "
                    + (f"{100 * f['share_of_matmul_peak']:.0f}%" if f else "-")
                    + " |"
                )
    lines += ["", "Parameters and exactness (batch 1, random weights):", ""]
    for size, res in report["results"].items():
        lines.append(
            f"- {size}: {res['ours']} {res['params']:,} params, {res['gflops_per_image']:.2f} GFLOP/image; "
            f"max |ours - timm| = {res['max_abs_diff_ours_vs_timm']:.2e}, "
            f"max |folded - ours| = {res['max_abs_diff_folded_vs_ours']:.2e}"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_vision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 64])
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--train-rounds", type=int, default=5)
    p.add_argument("--target-call-s", type=float, default=0.5, help="repeat small-batch calls up to about this long")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (every model alike)")
    p.add_argument("--quick", action="store_true", help="tiny models, batch 1 and 2, one round: a smoke test")
    p.add_argument("--out", default="results/bench_vision", help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.train_batch, args.img_size = [1, 2], 2, 64
        args.rounds = args.train_rounds = 1
        args.target_call_s, args.matmul_n = 0.0, 256
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = machine_info(device, packages=("timm", "numpy"))
    peak = matmul_gflops(device, torch.float32, args.matmul_n, 0.2 if args.quick else 3.0)
    print(f"machine: {info['cpu']}, {info['torch_threads']} threads, device {device}; fp32 matmul {peak:.1f} GFLOP/s",
          flush=True)

    precisions: List[Any] = [None]
    if device.type == "cuda":
        precisions = [torch.bfloat16]  # the GPU measurement: bf16 autocast
        bf16_note = "CUDA: every figure uses bf16 autocast"
    elif info["cpu_native_bf16"]:
        precisions = [None, torch.bfloat16]
        bf16_note = "this CPU has native bf16: figures in fp32 and bf16 autocast"
    else:
        bf16_note = "not measured: this CPU has no native bf16 (oneDNN reports none) and the benchmark ran on the CPU"

    report: Dict[str, Any] = {
        "machine": info,
        "command": "python -m benchmarks.bench_vision " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "matmul_gflops_fp32": peak,
        "bf16_note": bf16_note,
        "results": {},
    }
    if device.type == "cuda":
        report["matmul_gflops_bf16"] = matmul_gflops(device, torch.bfloat16, args.matmul_n * 2, 2.0)
    for size in args.sizes:
        for dtype in precisions:
            res = bench_size(size, args, device, peak, dtype)
            if size in report["results"]:  # second precision: merge the tables
                for kind in ("inference", "train_step"):
                    report["results"][size][kind].update(res[kind])
            else:
                report["results"][size] = res
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    write_result(out.with_suffix(".md"), markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
