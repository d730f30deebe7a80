"""The token-mixer study (python -m benchmarks.mt_token_mixers): its screen and race on a tiny
corpus with tiny models; rows compared with the paper's mixer and the Transformer; the cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.mt_token_mixers import VARIANTS
from conftest import REPO
from helpers import prepare_multi30k, write_corpus

TINY = ("--encoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-layers 1 "
        "--decoder-layers 1 --decoder-attention-heads 2 --max-tokens 500 --num-workers 0 --log-interval 2 "
        "--max-source-positions 64 --max-target-positions 64")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_mixers")
    raw = write_corpus(root / "raw", sizes={"train": 80, "val": 8, "test_2016_flickr": 6})
    assert prepare_multi30k(raw, root / "data-bin").returncode == 0
    base = [sys.executable, "-m", "benchmarks.mt_token_mixers", "--pairs", "en-de",
            "--data-root", str(root / "data-bin"), "--work-dir", str(root / "work"),
            "--results-dir", str(root / "results"), "--progress-seconds", "0", "--extra-train-args", TINY]
    screen = base + ["--stage", "screen", "--updates", "4", "--variants", "paper", "relative", "glu", "transformer"]
    first = subprocess.run(screen, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    race = base + ["--stage", "race", "--minutes", "0.1", "--seeds", "1", "--race-variants", "paper", "relative"]
    raced = subprocess.run(race, capture_output=True, text=True, cwd=REPO)
    assert raced.returncode == 0, raced.stdout[-4000:] + raced.stderr[-4000:]
    return {"root": root, "screen": screen, "first": first}


@pytest.mark.slow
def test_screen_rows_compare_every_variant_with_the_paper_and_the_transformer(study):
    out = json.loads((study["root"] / "results" / "mt_token_mixers_screen.json").read_text())
    rows = {r["variant"]: r for r in out["rows"]}
    assert set(rows) == {"paper", "relative", "glu", "transformer"}
    for name, row in rows.items():
        assert row["updates"] == 4 and row["parameters"] > 0
        assert row["vs_paper"] == pytest.approx(row["valid_sacrebleu"] - rows["paper"]["valid_sacrebleu"], abs=0.011)
        assert row["vs_transformer"] == pytest.approx(row["valid_sacrebleu"] - rows["transformer"]["valid_sacrebleu"],
                                                      abs=0.011)
        assert row["flags"] == ("" if name == "transformer" else " ".join(VARIANTS[name][1]))
    assert rows["glu"]["parameters"] > rows["paper"]["parameters"]  # the gate's projections
    assert rows["paper"]["run"].startswith("sweep/")  # the sweep's run of the paper's mixer, shared
    text = (study["root"] / "results" / "mt_token_mixers_screen.md").read_text()
    assert "| relative |" in text and f" {study['root']}" not in text  # paths relative to the repository


@pytest.mark.slow
def test_race_reports_every_variant_per_seed_with_speed_and_parameters(study):
    out = json.loads((study["root"] / "results" / "mt_token_mixers_race.json").read_text())
    assert {(r["variant"], r["seed"]) for r in out["runs"]} == {("paper", 1), ("relative", 1), ("transformer", 1)}
    assert all(r["updates"] > 0 and r["parameters"] > 0 and set(r["sacrebleu"]) == {"test", "valid"}
               for r in out["runs"])
    summary = out["summary"]["en-de"]
    assert summary["relative"]["test"]["values"] == [r["sacrebleu"]["test"] for r in out["runs"]
                                                     if r["variant"] == "relative"]
    assert "test vs Transformer" in (study["root"] / "results" / "mt_token_mixers_race.md").read_text()


@pytest.mark.slow
def test_a_rerun_of_the_screen_trains_nothing(study):
    again = subprocess.run(study["screen"], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0 and "4 cached (skipped), 0 to run" in again.stdout
