"""The translation benchmark script, in its --quick mode (a data slice, 20 s per system)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_bench_mt_quick_writes_json_table_and_plot(tmp_path, multi30k_dir):
    result = subprocess.run(
        [sys.executable, "scripts/bench_mt.py", "--quick", "--pairs", "en-de", "--raw-dir", str(multi30k_dir),
         "--workdir", str(tmp_path / "work"), "--output-dir", str(tmp_path / "results"), "--threads", "1"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "bench_mt.json").read_text())
    pair = results["pairs"]["en-de"]
    for system in ("resmlp", "transformer"):
        figures = pair[system]
        assert figures["updates"] > 0 and figures["words_per_second"] > 0
        assert figures["parameters"] > 100_000
        assert figures["valid_curve"] and figures["valid_curve"][-1]["minutes"] > 0
        assert figures["eval"]["test"]["sentences"] == 100 and figures["eval"]["valid"]["sentences"] == 100
        assert figures["profile"]["whole training step"] > 0
    assert pair["resmlp"]["profile"]["token mixing (ResMLP cross-token linear)"] > 0
    assert pair["transformer"]["profile"]["self-attention (Transformer)"] > 0
    assert "self-attention (Transformer)" not in pair["resmlp"]["profile"]
    assert "token mixing (ResMLP cross-token linear)" not in pair["transformer"]["profile"]
    assert set(pair["ratios"]) >= {"train_words_per_second", "test_generation_sentences_per_second", "test_sacrebleu_difference"}
    table = (tmp_path / "results" / "bench_mt.md").read_text()
    assert "ResMLP / Transformer" in table and "sacreBLEU signature" in table
    assert "self-attention (Transformer)" in table and "token mixing (ResMLP cross-token linear)" in table
    assert (tmp_path / "results" / "bench_mt_valid_loss.png").stat().st_size > 10_000
    assert results["machine"]["torch"] and results["settings"]["quick"] is True
