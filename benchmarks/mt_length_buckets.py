"""Where a translation gap lies by sentence length: sacreBLEU of two or more trained models on
one split, per bucket of source length, with each model's difference to a baseline and a paired
bootstrap interval.

    python -m benchmarks.mt_length_buckets --data data-bin/multi30k.en-de \\
        --model "relative + GLU=checkpoints/relative_glu/checkpoint_averaged.pt" \\
        --model "Transformer=checkpoints/transformer/checkpoint_averaged.pt"

Every model translates the split with ``fairseq-generate`` (beam 4, as the study's evaluations:
:func:`mt_tools.evaluate.translate_split`). Sentences go into buckets by the number of
whitespace words of their source (``--edges 9 12 15 19``: up to 9, 10-12, 13-15, 16-19, 20 and
more). Per bucket: each model's sacreBLEU and output/reference length ratio, and its difference
to the baseline (``--baseline``, default the last model) with a 95% paired bootstrap interval
(``--bootstrap`` resamples of the bucket's sentences, the same resample for both models, as
sacreBLEU's paired bootstrap). A bucket's BLEU is noisy (a few hundred sentences): read the
intervals before the differences.

Writes ``<results-dir>/<output>.json`` and ``.md`` and a bar plot ``.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from benchmarks.common import machine_info, repo_relative, write_result

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("mt_length_buckets")


def bucket_labels(edges: Sequence[int]) -> List[str]:
    """``[9, 12]`` -> ``["<= 9", "10-12", ">= 13"]``."""
    labels, low = [], 1
    for e in edges:
        labels.append(f"<= {e}" if low == 1 else f"{low}-{e}")
        low = e + 1
    return [*labels, f">= {low}"]


def bucket_of(words: int, edges: Sequence[int]) -> int:
    """The index of the bucket of a source of ``words`` words (:func:`bucket_labels`)."""
    return int(np.searchsorted(np.asarray(edges), words, side="left"))


@functools.lru_cache(maxsize=None)
def _metric():
    """One sacreBLEU BLEU metric (default settings) for every score of a run: the bootstrap scores
    thousands of resamples, so it is built once."""
    import sacrebleu

    return sacrebleu.metrics.BLEU()


def _stats(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-sentence BLEU statistics ``(n, 2 + 2 * 4)`` (sacreBLEU's: lengths, n-gram matches and totals)."""
    return np.asarray(_metric()._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)


def _bleu(stats: np.ndarray) -> float:
    """sacreBLEU of the sentences whose statistics are the rows of ``stats``."""
    return _metric()._compute_score_from_stats(list(stats.sum(0))).score


def signature(hyps: Sequence[str], refs: Sequence[str]) -> str:
    """sacreBLEU's signature of these scores (it needs one evaluation first)."""
    _metric().corpus_score(list(hyps), [list(refs)])
    return str(_metric().get_signature())


def bucket_table(hypotheses: Dict[str, List[str]], references: List[str], sources: List[str], edges: Sequence[int],
                 baseline: str, resamples: int = 1000, seed: int = 1) -> List[dict]:
    """One row per bucket (and ``"all"``): sentences, each model's sacreBLEU and length ratio, and
    each other model's difference to ``baseline`` with its 95% paired bootstrap interval."""
    labels = bucket_labels(edges)
    buckets = np.array([bucket_of(len(s.split()), edges) for s in sources])
    stats = {name: _stats(h, references) for name, h in hypotheses.items()}
    rng = np.random.default_rng(seed)
    rows = []
    for b, label in [*enumerate(labels), (None, "all")]:
        index = np.arange(len(references)) if b is None else np.flatnonzero(buckets == b)
        row = {"bucket": label, "sentences": int(index.size), "models": {}}
        if index.size == 0:
            rows.append(row)
            continue
        draws = rng.integers(0, index.size, size=(resamples, index.size))
        base_stats = stats[baseline][index]
        base_score, base_draws = _bleu(base_stats), np.array([_bleu(base_stats[d]) for d in draws])
        for name, s in stats.items():
            own = s[index]
            score = _bleu(own)
            entry = {"sacrebleu": round(score, 2),
                     "length_ratio": round(float(own[:, 0].sum() / max(1, own[:, 1].sum())), 3)}
            if name != baseline:
                diffs = np.array([_bleu(own[d]) for d in draws]) - base_draws
                entry["difference"] = round(entry["sacrebleu"] - base_score, 2)
                entry["interval95"] = [round(float(np.percentile(diffs, 2.5)), 2),
                                       round(float(np.percentile(diffs, 97.5)), 2)]
            row["models"][name] = entry
        rows.append(row)
    return rows


def markdown(out: dict) -> str:
    names, base = list(out["models"]), out["baseline"]
    others = [n for n in names if n != base]
    head = (["source words", "sentences"] + [f"{n} sacreBLEU" for n in names]
            + [f"{n} - {base} (95% interval)" for n in others] + [f"{n} length ratio" for n in names])
    lines = [f"# Translation quality by source length: {', '.join(names)} ({out['split']} split)", "",
             f"Data: `{out['data']}`; beam {out['beam']}; sacreBLEU per bucket of source length (whitespace words); "
             f"differences to {base} with a 95% paired bootstrap interval ({out['bootstrap']} resamples of the "
             "bucket's sentences). Length ratio: output / reference length (sacreBLEU's tokens).", "",
             "Models: " + "; ".join(f"{n}: `{p}`" for n, p in out["models"].items()) + ".", "",
             f"Reproduce: `{out['command']}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for row in out["rows"]:
        m = row["models"]
        if not m:
            continue
        cells = [row["bucket"], str(row["sentences"])] + [f"{m[n]['sacrebleu']:.2f}" for n in names]
        cells += [f"{m[n]['difference']:+.2f} ({m[n]['interval95'][0]:+.2f}, {m[n]['interval95'][1]:+.2f})"
                  for n in others]
        cells += [f"{m[n]['length_ratio']:.3f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"sacreBLEU signature: `{out['signature']}`", ""]
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = out["baseline"]
    others = [n for n in out["models"] if n != base]
    rows = [r for r in out["rows"] if r["models"]]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(others))
    for i, name in enumerate(others):
        d = np.array([r["models"][name]["difference"] for r in rows])
        lo = np.array([r["models"][name]["interval95"][0] for r in rows])
        hi = np.array([r["models"][name]["interval95"][1] for r in rows])
        ax.bar(x + (i - (len(others) - 1) / 2) * width, d, width, yerr=[d - lo, hi - d], capsize=3, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"{r['bucket']}\n({r['sentences']})" for r in rows])
    ax.set_xlabel("source words (sentences)")
    ax.set_ylabel(f"sacreBLEU - {base}")
    ax.set_title(f"{out['data']} {out['split']}: difference to {base} by source length (95% intervals)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_model(text: str) -> Tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=CHECKPOINT")
    return name, Path(path)


def main(argv=None) -> dict:
    from mt_tools.evaluate import EvaluationError, translate_split

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared folder (scripts/prepare_multi30k.py)")
    p.add_argument("--model", type=parse_model, action="append", required=True, metavar="NAME=CHECKPOINT",
                   help="a model to compare (at least two)")
    p.add_argument("--baseline", help="the model the others are compared to (default: the last --model)")
    p.add_argument("--split", default="test")
    p.add_argument("--edges", type=int, nargs="+", default=[9, 12, 15, 19],
                   help="upper bounds of the buckets, in source words")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples per bucket")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of fairseq-generate")
    p.add_argument("--results-dir", type=Path, default=REPO / "results")
    p.add_argument("--output", default="mt_length_buckets", help="results file stem")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    models = dict(a.model)
    if len(models) < 2:
        p.error("--model: give at least two models (NAME=CHECKPOINT each, distinct names)")
    baseline = a.baseline or list(models)[-1]
    if baseline not in models:
        p.error(f"--baseline {baseline!r} is not one of the --model names: {', '.join(models)}")
    if sorted(a.edges) != a.edges or len(set(a.edges)) != len(a.edges) or a.edges[0] < 1:
        p.error(f"--edges {' '.join(map(str, a.edges))}: give increasing positive word counts")
    hypotheses, translations = {}, None
    for name, checkpoint in models.items():
        log.info("translating %s with %s (%s)", a.split, name, checkpoint)
        try:
            translations = translate_split(a.data, checkpoint, a.split, beam=a.beam, threads=a.threads)
        except EvaluationError as err:
            sys.exit(f"--model {name}={checkpoint}: {err}")
        hypotheses[name] = translations.hypotheses
    rows = bucket_table(hypotheses, translations.references, translations.sources, a.edges, baseline, a.bootstrap)
    out = {"data": str(repo_relative(a.data)), "split": a.split, "beam": a.beam, "edges": a.edges,
           "bootstrap": a.bootstrap, "baseline": baseline,
           "models": {n: str(repo_relative(c)) for n, c in models.items()},
           "signature": signature(hypotheses[baseline], translations.references),
           "command": "python -m benchmarks.mt_length_buckets " + " ".join(
               f'"{x}"' if " " in x else x for x in (argv if argv is not None else sys.argv[1:])),
           "machine": machine_info(), "rows": rows}
    a.results_dir.mkdir(parents=True, exist_ok=True)
    write_result(a.results_dir / f"{a.output}.json", json.dumps(out, indent=1) + "\n")
    text = markdown(out)
    write_result(a.results_dir / f"{a.output}.md", text)
    plot(out, a.results_dir / f"{a.output}.png")
    print(text)
    return out


if __name__ == "__main__":
    main()
