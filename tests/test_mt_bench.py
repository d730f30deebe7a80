"""The translation benchmark script, in its --quick mode (a data slice, 20 s per system), on a
corpus written by the test with Multi30k's file names (made-up words widen its vocabulary to the
1000 BPE pieces of --quick)."""

import json
import sys

import pytest

from helpers import run, write_corpus

pytestmark = pytest.mark.slow


def test_bench_mt_quick_writes_json_table_and_plot(tmp_path):
    raw = write_corpus(tmp_path / "raw", sizes={"train": 2000, "val": 100, "test_2016_flickr": 100}, extra_words=600)
    run([sys.executable, "-m", "benchmarks.bench_mt", "--quick", "--pairs", "en-de", "--raw-dir", raw,
         "--workdir", tmp_path / "work", "--output-dir", tmp_path / "results", "--threads", "1"])
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
    assert set(pair["ratios"]) >= {"train_words_per_second", "test_generation_sentences_per_second",
                                   "test_sacrebleu_difference"}
    table = (tmp_path / "results" / "bench_mt.md").read_text()
    assert "ResMLP / Transformer" in table and "sacreBLEU signature" in table
    assert "self-attention (Transformer)" in table and "token mixing (ResMLP cross-token linear)" in table
    assert (tmp_path / "results" / "bench_mt_valid_loss.png").stat().st_size > 10_000
    assert results["machine"]["torch"] and results["settings"]["quick"] is True
    assert results["settings"]["generation"]["extra_args"] == ["--max-len-a", "1.2", "--max-len-b", "10"]
    assert "(--max-len-a 1.2 --max-len-b 10)" in table
