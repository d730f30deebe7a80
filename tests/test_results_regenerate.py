"""Every ``results/<stem>.md`` that has a ``results/<stem>.json`` is the table its study's current
renderer writes from that JSON, byte for byte.

Each study writes its ``.md`` from the very dict it saves as ``.json`` (``benchmarks/``), so rendering
the committed JSON again must give the committed ``.md``: a renderer that drifted from the files it
wrote (a renamed key, new wording) or a ``.md`` edited by hand fails here. No renderer stamps the
current time (dates are read from the JSON), so the comparison is exact. A new results file needs
its renderer in ``RENDERERS``: a pair without one fails, so that none is forgotten.
"""

from __future__ import annotations

import difflib
import json
from functools import partial
from pathlib import Path

import pytest

from benchmarks import (ablate_mt_init, bench_decode, bench_dino, bench_vision, fairseq_runs, gpu_acceptance,
                        mt_distill, mt_length_buckets, mt_token_mixers, race_mt, screen_dino, vision_report)
from conftest import REPO

RESULTS = REPO / "results"


def _mt_report(out: dict) -> str:
    """``race_mt --stage report``'s page: its goals (``mt_report.json``) and the tables of the
    JSON files it names as its sources."""
    loaded = {name: json.loads((REPO / path).read_text()) if path else None for name, path in out["sources"].items()}
    return race_mt.report_markdown(out, loaded)


#: results stem -> the function that writes its ``.md`` from its ``.json`` (the loaded dict)
RENDERERS = {
    "bench_decode": bench_decode.markdown,
    "bench_decode_1thread": bench_decode.markdown,
    "bench_mt": fairseq_runs.markdown_table,
    "bench_vision": bench_vision.markdown,
    "dino_cifar10": bench_dino.markdown,
    "dino_cifar10_multicrop": bench_dino.markdown,
    "dino_screens": screen_dino.markdown,
    "gpu_acceptance": gpu_acceptance.markdown,
    "gpu_acceptance_h100_run1": gpu_acceptance.markdown,
    "mt_curves": race_mt.curves_markdown,
    "mt_distill": mt_distill.markdown,
    "mt_distill_decode": bench_decode.markdown,
    "mt_init_ablation": ablate_mt_init.markdown,
    "mt_length_buckets_en-de": mt_length_buckets.markdown,
    "mt_race": race_mt.race_markdown,
    "mt_report": _mt_report,
    "mt_sweep": race_mt.sweep_markdown,
    "mt_sweep_wide_lr": race_mt.sweep_markdown,
    "mt_token_mixers_curves": mt_token_mixers.curves_markdown,
    "mt_token_mixers_decode": bench_decode.markdown,
    "mt_token_mixers_decode_layers3+1": bench_decode.markdown,
    "mt_token_mixers_decode_layers3+1_25min": bench_decode.markdown,
    "mt_token_mixers_decode_layers3+1_25min_rerun": bench_decode.markdown,
    "mt_token_mixers_dynamic_curves": mt_token_mixers.curves_markdown,
    "mt_token_mixers_layers3+1_curves": mt_token_mixers.curves_markdown,
    "mt_token_mixers_layers3+1_en-fr_curves": mt_token_mixers.curves_markdown,
    "mt_token_mixers_layers3+1_en-fr_patience6_curves": mt_token_mixers.curves_markdown,
    "mt_token_mixers_layers3+1_race": mt_token_mixers.race_markdown,
    "mt_token_mixers_layers3+1_seed2_curves": mt_token_mixers.curves_markdown,
    "mt_token_mixers_layers3+1_seed2_patience6_curves": mt_token_mixers.curves_markdown,
    "mt_token_mixers_race": mt_token_mixers.race_markdown,
    "mt_token_mixers_screen": mt_token_mixers.screen_markdown,
    "mt_token_mixers_screen_en-fr": mt_token_mixers.screen_markdown,
    "mt_token_mixers_screen_lr": mt_token_mixers.screen_markdown,
    "vision_cifar10": partial(vision_report.markdown, name="vision_cifar10"),
    "vision_distill_cifar10": partial(vision_report.markdown, name="vision_distill_cifar10"),
}

STEMS = sorted(p.stem for p in RESULTS.glob("*.md") if p.with_suffix(".json").is_file())


def test_results_have_pairs():
    assert STEMS, f"no results pairs (.md with .json) found in {RESULTS}"
    stale = sorted(set(RENDERERS) - set(STEMS))
    assert not stale, f"RENDERERS names results that are not in {RESULTS} (as .md and .json): {stale}"


@pytest.mark.parametrize("stem", STEMS)
def test_markdown_regenerates_from_json(stem):
    assert stem in RENDERERS, (f"results/{stem}.md and .json have no renderer in RENDERERS "
                               f"({Path(__file__).name}): add the function its study writes the .md with")
    saved = json.loads((RESULTS / f"{stem}.json").read_text())
    written = (RESULTS / f"{stem}.md").read_text()
    rendered = RENDERERS[stem](saved)
    if rendered != written:
        diff = list(difflib.unified_diff(written.splitlines(), rendered.splitlines(), f"results/{stem}.md",
                                         "rendered from the .json", lineterm="", n=1))
        pytest.fail(f"results/{stem}.md is not what its renderer writes from results/{stem}.json "
                    f"({len(diff)} diff lines):\n" + "\n".join(diff[:40]))
