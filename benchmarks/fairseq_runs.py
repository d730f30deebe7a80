"""Translation benchmark: ResMLP against a fairseq Transformer of the same size, side by side.

For each language pair, both systems are trained by ``scripts/train_multi30k.sh`` (same data,
vocabulary, embeddings, batch size in tokens, optimizer settings and wall-clock budget) and
evaluated by :func:`mt_tools.evaluate.evaluate` (beam 4, batch 128). The figures come from the
real fairseq runs: training words/s = target tokens trained on / fairseq's ``train_wall``;
validation loss against wall-clock time from the timestamps of the validation log lines;
generation sentences/s and tokens/s as ``fairseq-generate`` reports them; peak memory as the
peak RSS of each process.

:func:`profile_components` says where the time of a training step goes: it records the inputs
of each kind of sublayer during a real forward pass (token mixing, self-attention,
cross-attention, channel MLP / FFN, output projection + loss) and replays each one alone,
forward and backward, on a real batch.

Entry point: ``python -m benchmarks.bench_mt``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from benchmarks.common import machine_info as _machine_info
from benchmarks.common import parse_fairseq_log

from mt_tools.evaluate import evaluate, result_dict, run_measured
from mt_tools.layout import PreparedData, folder_name

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("resmlp", "transformer")

#: The machine, with fairseq's version.
machine_info = partial(_machine_info, packages=("fairseq",))


def parse_json_log(text: str) -> Dict[str, List[dict]]:
    """Group fairseq's ``--log-format json`` records by logger (train_inner, valid, train),
    each with its log timestamp as ``time`` (seconds since the epoch)."""
    records: Dict[str, List[dict]] = defaultdict(list)
    for line in parse_fairseq_log(text):
        if line.level == "INFO" and line.record is not None and "." not in line.logger:
            records[line.logger].append(dict(line.record, time=line.time))
    return records


def _training_start(text: str) -> Optional[float]:
    """When fairseq-train began its first epoch (the log's timestamp), else None."""
    return next((line.time for line in parse_fairseq_log(text)
                 if line.logger == "fairseq.trainer" and line.message == "begin training epoch 1"), None)


def training_figures(log_text: str) -> dict:
    """Words/s, updates and the validation curve of one fairseq-train run (json log).

    fairseq's per-epoch ``train`` records hold each epoch's tokens per batch, updates and
    ``train_wall`` (time in training steps, without validation and checkpointing); the last
    one covers the part of the last epoch done before the time budget ran out.
    """
    records = parse_json_log(log_text)
    epochs = records.get("train", [])
    start = _training_start(log_text)
    if not epochs or start is None:
        raise RuntimeError("no training records in the fairseq-train log (was --log-format json used?)")
    words, train_wall, updates = 0.0, 0.0, 0
    for r in epochs:
        done = int(r["train_num_updates"])
        words += (done - updates) * float(r["train_wpb"])
        train_wall += float(r["train_train_wall"])
        updates = done
    curve = [
        {"minutes": round((v["time"] - start) / 60, 2), "num_updates": int(v["valid_num_updates"]),
         "valid_loss": float(v["valid_loss"])}
        for v in records.get("valid", [])
    ]
    return {
        "updates": updates,
        "target_tokens": int(words),
        "train_wall_seconds": round(train_wall, 1),
        "seconds_per_update": round(train_wall / max(updates, 1), 4),
        "words_per_second": round(words / train_wall, 1),
        "best_valid_loss": min((c["valid_loss"] for c in curve), default=float("nan")),
        "valid_curve": curve,
    }


def count_parameters(checkpoint: Path) -> int:
    """Parameters of the model in a fairseq checkpoint (tied weights counted once)."""
    from fairseq import checkpoint_utils

    import resmlp_mt  # noqa: F401

    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoint)])
    return sum(p.numel() for p in models[0].parameters())


def train_system(system: str, pair: str, data: Path, save_dir: Path, minutes: float, extra: List[str],
                 threads: int) -> dict:
    env = dict(os.environ, MODEL=system, MINUTES=str(minutes), DATA=str(data), SAVE_DIR=str(save_dir),
               LOG_FORMAT="json", FAIRSEQ_TRAIN=str(Path(sys.executable).parent / "fairseq-train"),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [str(REPO / "scripts" / "train_multi30k.sh"), pair, *extra]
    logger.info("training %s on %s for %.1f minutes: %s", system, pair, minutes, " ".join(cmd))
    result = run_measured(cmd, env=env)
    (save_dir / "train.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"training {system} on {pair} failed:\n{result.stderr[-3000:]}")
    figures = training_figures(result.stdout + result.stderr)
    figures["peak_rss_mb"] = round(result.peak_rss_mb, 1)
    figures["command"] = cmd
    return figures


def run_benchmark(
    pairs: List[str],
    raw_dir: Path,
    workdir: Path,
    minutes: float,
    vocab_size: int = 8000,
    eval_splits=("test", "valid"),
    extra_train_args: Optional[List[str]] = None,
    threads: int = 2,
    profile_batches: int = 3,
    generation_args: Sequence[str] = (),
) -> dict:
    """Prepare, train and evaluate both systems on every pair; return every figure.

    ``generation_args`` go to every fairseq-generate call (for example a maximum output length)."""
    from mt_tools.corpus import multi30k_splits, prepare_parallel_corpus

    results: dict = {"settings": {"pairs": pairs, "minutes_per_system": minutes, "vocab_size": vocab_size,
                                  "budget": "same wall-clock training time (fairseq --stop-time-hours)",
                                  "threads": threads, "generation": {"beam": 4, "batch_size": 128}},
                     "machine": machine_info(), "pairs": {}}
    if generation_args:
        results["settings"]["generation"]["extra_args"] = list(generation_args)
    for pair in pairs:
        src, tgt = pair.split("-")
        data = workdir / folder_name("multi30k", src, tgt)
        if not PreparedData(data).is_prepared():
            prepare_parallel_corpus(multi30k_splits(raw_dir, src, tgt), src, tgt, data, vocab_size, workers=threads)
        pair_results = {}
        for system in SYSTEMS:
            save_dir = workdir / f"{pair}.{system}"
            save_dir.mkdir(parents=True, exist_ok=True)
            for old in save_dir.glob("checkpoint*.pt"):
                old.unlink()  # a fresh run: the budget is wall-clock time from scratch
            figures = train_system(system, pair, data, save_dir, minutes, extra_train_args or [], threads)
            checkpoint = save_dir / "checkpoint_best.pt"
            figures["parameters"] = count_parameters(checkpoint)
            figures["eval"] = {}
            for split in eval_splits:
                r = evaluate(data, checkpoint, split=split, beam=4, batch_size=128, num_samples=3, threads=threads,
                             extra_args=generation_args)
                figures["eval"][split] = result_dict(r)
                logger.info("%s %s %s: sacreBLEU %.2f, %.1f sentences/s", pair, system, split, r.sacrebleu,
                            r.sentences_per_second)
            profile = profile_components(checkpoint, data, batches=profile_batches, threads=threads)
            # what fairseq-train spends per update beyond the model's own step (data loading,
            # criterion bookkeeping, gradient norm, logging), at the same tokens per batch
            profile["fairseq overhead per update"] = round(figures["seconds_per_update"]
                                                           - profile["whole training step"], 4)
            figures["profile"] = profile
            pair_results[system] = figures
        pair_results["ratios"] = ratios(pair_results["resmlp"], pair_results["transformer"])
        results["pairs"][pair] = pair_results
    return results


def ratios(ours: dict, peer: dict) -> dict:
    out = {
        "train_words_per_second": ours["words_per_second"] / peer["words_per_second"],
        "updates": ours["updates"] / peer["updates"],
        "parameters": ours["parameters"] / peer["parameters"],
    }
    for split in ours["eval"]:
        out[f"{split}_generation_sentences_per_second"] = (
            ours["eval"][split]["sentences_per_second"] / peer["eval"][split]["sentences_per_second"]
        )
        out[f"{split}_sacrebleu_difference"] = ours["eval"][split]["sacrebleu"] - peer["eval"][split]["sacrebleu"]
    return {k: round(v, 3) for k, v in out.items()}


# --- where the time of a training step goes -----------------------------------------------------

CATEGORIES = {
    "token mixing (ResMLP cross-token linear)": re.compile(r"\.layers\.\d+\.token_mixer$"),
    "self-attention (Transformer)": re.compile(r"\.layers\.\d+\.self_attn$"),
    "cross-attention": re.compile(r"decoder\.layers\.\d+\.(cross_attn|encoder_attn)$"),
    "channel MLP / FFN": re.compile(r"\.layers\.\d+\.(channel_mlp|fc1|fc2)$"),
}


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def profile_components(checkpoint: Path, data: Path, batches: int = 3, max_tokens: int = 2048,
                       threads: int = 2) -> dict:
    """Seconds per training step (forward + backward) spent in each kind of sublayer, on real
    batches of ``max_tokens`` target tokens, next to the whole step (forward, backward, Adam)."""
    from fairseq import checkpoint_utils

    import resmlp_mt  # noqa: F401

    torch.set_num_threads(threads)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                      arg_overrides={"data": str(data)})
    model = models[0].train()
    task.load_dataset("train")
    iterator = task.get_batch_iterator(
        task.dataset("train"), max_tokens=max_tokens, max_positions=(128, 128), seed=1,
        required_batch_size_multiple=1, ignore_invalid_inputs=True,
    ).next_epoch_itr(shuffle=True)
    samples = [next(iterator) for _ in range(batches)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def loss_of(sample):
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        return torch.nn.functional.nll_loss(
            lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1), ignore_index=task.target_dictionary.pad(),
            reduction="sum"
        )

    def full_step(sample):
        optimizer.zero_grad()
        loss_of(sample).backward()
        optimizer.step()

    totals: Dict[str, float] = defaultdict(float)
    for sample in samples:
        totals["whole training step"] += _timed(lambda: full_step(sample), 2)
        captured = []
        handles = []
        for name, module in model.named_modules():
            for category, pattern in CATEGORIES.items():
                if pattern.search(name):
                    handles.append(module.register_forward_hook(
                        lambda m, args, kwargs, out, c=category: captured.append((c, m, args, kwargs)),
                        with_kwargs=True))
        decoder_features = {}
        handles.append(model.decoder.output_projection.register_forward_hook(
            lambda m, args, out: decoder_features.setdefault("x", args[0])))
        with torch.no_grad():
            model(**sample["net_input"])
        for h in handles:
            h.remove()
        for category, module, args, kwargs in captured:
            totals[category] += _timed(lambda: _forward_backward(module, args, kwargs), 2)
        features = decoder_features["x"].detach().requires_grad_()
        target = sample["target"]

        def projection_and_loss():
            logits = model.decoder.output_projection(features)
            lprobs = torch.log_softmax(logits.float(), dim=-1)
            torch.nn.functional.nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), reduction="sum").backward()

        totals["output projection + softmax + loss"] += _timed(projection_and_loss, 2)
    n = len(samples)
    out = {k: round(v / n, 4) for k, v in totals.items()}
    parts = sum(v for k, v in out.items() if k != "whole training step")
    out["other (embeddings, norms, dropout, residuals, optimizer)"] = round(out["whole training step"] - parts, 4)
    out["target_tokens_per_batch"] = round(sum(s["ntokens"] for s in samples) / n, 1)
    return out


def _forward_backward(module, args, kwargs):
    args = [a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    kwargs = {k: (v.detach().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in kwargs.items()}
    out = module(*args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.ones_like(out))


# --- publishing ---------------------------------------------------------------------------------


def markdown_table(results: dict) -> str:
    lines = [
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['gpu'] or 'no GPU'}; torch {results['machine']['torch']}, "
        f"fairseq {results['machine']['fairseq']}. "
        f"Budget: {results['settings']['minutes_per_system']} minutes of training per system "
        "(same wall-clock time), then fairseq-generate with beam 4, batch 128"
        + (f" ({' '.join(results['settings']['generation']['extra_args'])})."
           if results["settings"]["generation"].get("extra_args") else "."),
        "",
        "| pair | system | params | updates | train words/s | best valid loss | sacreBLEU test_2016_flickr | "
        "sacreBLEU val | gen. sent/s | gen. tok/s | peak RSS train / gen (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair, systems in results["pairs"].items():
        for system in SYSTEMS:
            f = systems[system]
            test, val = f["eval"].get("test", {}), f["eval"].get("valid", {})
            lines.append(
                f"| {pair} | {system} | {f['parameters']:,} | {f['updates']} | {f['words_per_second']:.0f} | "
                f"{f['best_valid_loss']:.3f} | {test.get('sacrebleu', float('nan')):.2f} | "
                f"{val.get('sacrebleu', float('nan')):.2f} | "
                f"{test.get('sentences_per_second', float('nan')):.1f} | "
                f"{test.get('tokens_per_second', float('nan')):.0f} | "
                f"{f['peak_rss_mb']:.0f} / {test.get('peak_rss_mb', float('nan')):.0f} |"
            )
        r = systems["ratios"]
        lines.append(
            f"| {pair} | **ResMLP / Transformer** | {r['parameters']:.2f}x | {r['updates']:.2f}x | "
            f"**{r['train_words_per_second']:.2f}x** | | "
            f"**{r.get('test_sacrebleu_difference', float('nan')):+.2f}** BLEU | "
            f"{r.get('valid_sacrebleu_difference', float('nan')):+.2f} BLEU | "
            f"**{r.get('test_generation_sentences_per_second', float('nan')):.2f}x** | | |"
        )
    signature = next(iter(next(iter(results["pairs"].values()))["resmlp"]["eval"].values()))["sacrebleu_signature"]
    lines += ["", f"sacreBLEU signature: `{signature}`", "",
              "Where the time of a training step goes (seconds per batch, forward + backward):", ""]
    profiles = [systems[s]["profile"] for systems in results["pairs"].values() for s in SYSTEMS]
    categories = ["whole training step", *CATEGORIES, "output projection + softmax + loss",
                  "other (embeddings, norms, dropout, residuals, optimizer)", "fairseq overhead per update"]
    categories = [c for c in categories if any(c in p for p in profiles)]
    lines.append("| pair | system | " + " | ".join(categories) + " |")
    lines.append("|---|---|" + "---:|" * len(categories))
    for pair, systems in results["pairs"].items():
        for system in SYSTEMS:
            p = systems[system]["profile"]
            lines.append(f"| {pair} | {system} | " + " | ".join(f"{p[c]:.3f}" if c in p else "-" for c in categories)
                         + " |")
    return "\n".join(lines) + "\n"


def plot_valid_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(results["pairs"])
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        for system, style in zip(SYSTEMS, ("-o", "--s")):
            curve = results["pairs"][pair][system]["valid_curve"]
            ax.plot([c["minutes"] for c in curve], [c["valid_loss"] for c in curve], style, ms=3, label=system)
        ax.set_title(f"Multi30k {pair}")
        ax.set_xlabel("wall-clock minutes (training + validation)")
        ax.set_ylabel("validation loss (label-smoothed, bits/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the GPU studies (benchmarks/gpu_acceptance.py, benchmarks/gpu_race.py) ----------------------------

#: fairseq-train flags of Transformer-base at the depth and width of ResMLP-6 (``--arch resmlp_mt``'s
#: defaults): 6+6 layers, d 512, FFN 2048, 8 heads.
TRANSFORMER_BASE = ["--encoder-layers", "6", "--decoder-layers", "6", "--encoder-embed-dim", "512",
                    "--decoder-embed-dim", "512", "--encoder-ffn-embed-dim", "2048", "--decoder-ffn-embed-dim", "2048",
                    "--encoder-attention-heads", "8", "--decoder-attention-heads", "8"]
#: Stand-ins of both at 2 layers, d 64 for the CPU rehearsals of the GPU runs.
TINY_TRANSFORMER = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64",
                    "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
                    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
TINY_RESMLP = ["--encoder-layers", "2", "--encoder-embed-dim", "64", "--encoder-ffn-embed-dim", "256",
               "--decoder-attention-heads", "2"]

_OVERFLOW = ("gradient overflow detected", "AMP: overflow detected")


def _num(r: dict, k: str) -> float:
    try:
        return float(r[k])
    except (KeyError, TypeError, ValueError):
        return float("nan")


def words_per_second_spread(values: List[float]) -> dict:
    """Median, quartiles, extremes and count of per-interval words/s (non-finite values left out)."""
    v = sorted(x for x in values if math.isfinite(x))
    if not v:
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "min": float("nan"),
                "max": float("nan"), "n": 0}
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0], v[0], v[0])
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


def fairseq_figures(text: str) -> dict:
    """Figures of a ``fairseq-train --log-format json`` log, also of one stopped early: updates,
    losses, words/s (fairseq's ``wps`` per log interval; the median over the intervals after the
    first, which holds the start-up (CUDA context, first allocations), with its spread), overflow
    skips, non-finite values, parameters."""
    records = parse_json_log(text)
    inner, train, valid = records.get("train_inner", []), records.get("train", []), records.get("valid", [])
    losses = [_num(r, "loss") for r in inner]
    quarter = max(1, len(losses) // 4)
    wps = [_num(r, "wps") for r in inner]
    steady = [w for w in (wps[1:] if len(wps) > 1 else wps) if math.isfinite(w)]
    updates = 0
    if train and math.isfinite(_num(train[-1], "train_num_updates")):
        updates = int(_num(train[-1], "train_num_updates"))
    if not updates and inner and math.isfinite(_num(inner[-1], "num_updates")):
        updates = int(_num(inner[-1], "num_updates"))
    words, wall, done = 0.0, 0.0, 0
    for r in train:  # as training_figures: target tokens / time in training steps
        n = int(_num(r, "train_num_updates")) if math.isfinite(_num(r, "train_num_updates")) else done
        words += (n - done) * (_num(r, "train_wpb") if math.isfinite(_num(r, "train_wpb")) else 0.0)
        wall += _num(r, "train_train_wall") if math.isfinite(_num(r, "train_train_wall")) else 0.0
        done = n
    checked = [_num(r, k) for r in inner for k in ("loss", "nll_loss", "gnorm") if k in r]
    checked += [_num(r, "valid_loss") for r in valid if "valid_loss" in r]
    params = re.search(r"num\. (?:shared )?model params: ([\d,]+)", text)
    return {
        "updates": updates,
        "log_records": len(inner),
        # means over the first and the last quarter of the log intervals (one interval is noisy)
        "first_loss": statistics.fmean(losses[:quarter]) if losses else float("nan"),
        "last_loss": statistics.fmean(losses[-quarter:]) if losses else float("nan"),
        "final_lr": _num(inner[-1], "lr") if inner else float("nan"),
        "train_losses": losses,
        "wps": statistics.median(steady) if steady else float("nan"),
        "wps_spread": words_per_second_spread(steady),
        "wps_by_interval": wps,
        "words_per_train_second": words / wall if wall > 0 else float("nan"),
        "train_wall_s": wall,
        "valid_loss": _num(valid[-1], "valid_loss") if valid else float("nan"),
        "loss_scale": _num(inner[-1], "loss_scale") if inner and "loss_scale" in inner[-1] else None,
        "overflows": sum(text.count(s) for s in _OVERFLOW),
        # the dynamic loss scale starts high (fairseq: 128) and halves on each overflow until it
        # fits: overflows before the first log interval are that calibration, not instability
        "calibration_overflows": sum(any(s in line for s in _OVERFLOW)
                                     for line in text.split("| train_inner |", 1)[0].splitlines()) if inner else 0,
        "nonfinite": sum(1 for v in checked if not math.isfinite(v)),
        "fatal_errors": sum(text.count(s) for s in ("FloatingPointError", "Minimum loss scale reached",
                                                    "Traceback (most recent call last)")),
        "parameters": int(params.group(1).replace(",", "")) if params else None,
    }
