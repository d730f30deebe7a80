"""The decoding benchmark (``python -m benchmarks.bench_decode --quick``) on two tiny models
trained by ``fairseq-train`` for a few updates on a corpus written by the test: every row is
there with positive speeds, the equal-length rows hold exactly L tokens + end-of-sentence per
hypothesis, and the API's fast path translates as fairseq-generate does.

CTranslate2 is optional (requirements-bench.txt): without it its rows must be skipped with a
note, with it they must be there."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from benchmarks.bench_decode import (
    INTERLEAVED, Measurement, Row, TextSet, chunks_of, interleave, interleaved_pairs, round_ratio,
)
from conftest import REPO
from helpers import prepare_multi30k, run, write_corpus

pytestmark = pytest.mark.slow

USER_DIR = str(REPO / "resmlp_mt")
COMMON = [
    "--user-dir", USER_DIR, "--share-all-embeddings", "--max-source-positions", "64", "--max-target-positions", "64",
    "--optimizer", "adam", "--lr", "5e-3", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", "1000", "--no-progress-bar", "--num-workers", "0", "--seed", "1", "--no-epoch-checkpoints",
    "--no-save-optimizer-state", "--max-update", "30",
]
# as tests/helpers.py's TINY_MT, and a Transformer of the same width, depth and heads
RESMLP = ["--arch", "resmlp_mt_small", "--encoder-embed-dim", "32", "--encoder-layers", "1", "--decoder-layers", "1",
          "--decoder-attention-heads", "2"]
TRANSFORMER = ["--arch", "transformer", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "128",
               "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-attention-heads", "2",
               "--decoder-attention-heads", "2"]
L = 7


def test_quick_benchmark_has_every_row(tmp_path):
    raw = write_corpus(tmp_path / "raw", sizes={"train": 300, "val": 12, "test_2016_flickr": 24})
    assert prepare_multi30k(raw, tmp_path / "data-bin").returncode == 0
    data = tmp_path / "data-bin" / "multi30k.en-de"
    fairseq_train = str(Path(sys.executable).parent / "fairseq-train")
    for name, flags in (("resmlp", RESMLP), ("transformer", TRANSFORMER)):
        run([fairseq_train, data, *flags, *COMMON, "--save-dir", tmp_path / name])

    vmap = tmp_path / "vmap.txt"  # a lexical shortlist for both systems' extra rows
    learned = run([sys.executable, "-m", "mt_tools.vocabulary_map", "--data", data, "--out", vmap,
                   "--per-source", "5", "--frequent", "20"])
    assert learned.stdout.startswith(f"wrote {vmap}") and "of target tokens covered" in learned.stdout
    report = json.loads(vmap.with_suffix(".json").read_text())
    assert report["always"] == 22 and 0 < report["coverage_valid"]["tokens"] <= 1  # 20 + end-of-sentence, unknown

    out = tmp_path / "results" / "bench"
    result = run([sys.executable, "-m", "benchmarks.bench_decode", "--quick", "--data", data,
                  "--resmlp", tmp_path / "resmlp" / "checkpoint_best.pt",
                  "--transformer", tmp_path / "transformer" / "checkpoint_best.pt",
                  "--equal-length", L, "--threads", "1", "--out", out, "--work-dir", tmp_path / "work",
                  "--vocabulary-map", vmap, "--resmlp-beam", "1"])  # ResMLP greedy, the Transformer at beam 4
    results = json.loads(Path(f"{out}.json").read_text())
    markdown = Path(f"{out}.md").read_text()
    assert "## Equal output length" in markdown and markdown.strip() in result.stdout
    assert "round 1/1, row 1/" in result.stderr  # progress

    settings = results["settings"]
    assert (settings["sentences"], settings["latency_sentences"], settings["rounds"]) == (16, 4, 1)
    assert (settings["beam"], settings["resmlp_beam"]) == (4, 1) and "(ResMLP at beam 1 outside" in markdown
    assert settings["command"].startswith("python -m benchmarks.bench_decode --quick --data ")  # as rerun by hand
    assert results["checkpoints"]["resmlp"]["updates"] == results["checkpoints"]["transformer"]["updates"] == 30
    assert results["machine"]["cpu"] and results["versions"]["torch"] and results["versions"]["fairseq"]
    rows = {r["key"]: r for r in results["rows"]}
    expected = {
        "resmlp/fairseq-generate/fp32/b", "resmlp/api-fairseq/fp32/b", "resmlp/api-fast/fp32/b",
        "resmlp/api-fast/int8/b", "resmlp/api-onnx/int8/b", "transformer/fairseq-generate/fp32/b",
        "resmlp/fairseq-generate/fp32/1", "resmlp/api-fast/fp32/1", "resmlp/api-fast/int8/1",
        "resmlp/api-onnx/fp32/1", "resmlp/api-onnx/int8/1", "transformer/fairseq-generate/fp32/1",
        "resmlp/fairseq-generate/fp32/L", "transformer/fairseq-generate/fp32/L", "resmlp/sequence-generator/fp32/L",
        "transformer/sequence-generator/fp32/L", "resmlp/fast/fp32/L", "resmlp/fast/int8/L", "resmlp/onnx/int8/L",
        "resmlp/api-onnx-vmap/int8/b", "resmlp/api-onnx-vmap/int8/1", "resmlp/fast/int8/L1", "resmlp/onnx/int8/L1",
    }
    ct2 = {f"transformer/ctranslate2/{p}/{g}" for p in ("fp32", "int8") for g in ("b", "1", "L")}
    ct2 |= {"transformer/ctranslate2/int8/L1"}
    ct2 |= {"transformer/ctranslate2-vmap/int8/b", "transformer/ctranslate2-vmap/int8/1"}
    if results["versions"]["ctranslate2"] is None:
        assert set(rows) == expected
        assert any("CTranslate2 is not installed" in note for note in results["notes"])
        assert all(r["tokens_per_second_vs_ct2_int8"] is None for r in rows.values())
        assert settings["interleaved"] == []  # nothing to decode in turn with
    else:
        assert set(rows) == expected | ct2
        for key, row in rows.items():
            assert row["tokens_per_second_vs_ct2_int8"] > 0
            if key.startswith(("transformer/ctranslate2/int8/", "transformer/ctranslate2-vmap/int8/")):
                assert row["tokens_per_second_vs_ct2_int8"] == pytest.approx(1.0)
        for tag in ("b", "1"):  # a row with the map is compared with CTranslate2 with the map
            mine, theirs = rows[f"resmlp/api-onnx-vmap/int8/{tag}"], rows[f"transformer/ctranslate2-vmap/int8/{tag}"]
            assert mine["tokens_per_second_vs_ct2_int8"] == pytest.approx(round_ratio(mine, theirs))
        assert "Vocabulary map rows" in markdown
        assert settings["interleaved"] == [list(pair) for pair in INTERLEAVED]  # all there: decoded in turn
        assert "decode in turn within a round" in markdown

    for key, row in rows.items():
        one_at_a_time = row["group"] in ("latency", "equal_latency")
        n = 4 if one_at_a_time else 16
        assert row["sentences"] == n and row["batch_size"] == (1 if one_at_a_time else 128), key
        assert row["sentences_per_second"] > 0 and row["tokens_per_second"] > 0, key
        assert row["tokens"] >= n and row["mean_output_tokens"] == pytest.approx(row["tokens"] / n), key
        assert math.isfinite(row["sacrebleu"]) and row["sacrebleu_signature"].startswith("nrefs:1"), key
        if one_at_a_time:
            assert row["latency_ms_mean"] > 0, key
            assert ("latency_ms_median" in row) == (row["engine"] != "fairseq-generate"), key
        if row["group"] in ("equal", "equal_latency"):  # every hypothesis: L pieces + end-of-sentence
            assert row["min_output_tokens"] == row["max_output_tokens"] == L + 1, key
            assert row["tokens"] == n * (L + 1), key

    # one score per set of translations: rows with the same hypotheses of the same sentences agree
    scores = {}
    for key, row in rows.items():
        scores.setdefault((row["group"], row["sentences"], row["hypotheses_sha1"]), set()).add(row["sacrebleu"])
    assert all(len(s) == 1 for s in scores.values()), scores

    # the API's fast path finds fairseq-generate's translations (same token counts, same text)
    reference = rows["resmlp/fairseq-generate/fp32/b"]
    for key in ("resmlp/api-fast/fp32/b", "resmlp/api-fairseq/fp32/b"):
        assert rows[key]["sacrebleu"] == reference["sacrebleu"], key
        assert rows[key]["hypotheses_sha1"] == reference["hypotheses_sha1"], key
        assert rows[key]["tokens"] == reference["tokens"], key
    for key in ("resmlp/api-fast/fp32/1", "resmlp/api-onnx/fp32/1"):  # folded / ONNX: equal up to rounding
        assert rows[key]["hypotheses_sha1"] == rows["resmlp/fairseq-generate/fp32/1"]["hypotheses_sha1"], key
    for key in ("resmlp/fast/fp32/L", "resmlp/sequence-generator/fp32/L"):
        assert rows[key]["hypotheses_sha1"] == rows["resmlp/fairseq-generate/fp32/L"]["hypotheses_sha1"], key
    assert (rows["transformer/sequence-generator/fp32/L"]["hypotheses_sha1"]
            == rows["transformer/fairseq-generate/fp32/L"]["hypotheses_sha1"])
    ratio = results["equal_length_ratios"]["fairseq-generate ResMLP / Transformer"]
    assert ratio == pytest.approx(round_ratio(rows["resmlp/fairseq-generate/fp32/L"],
                                              rows["transformer/fairseq-generate/fp32/L"]))
    # at batch 1 too: the fast path and the ONNX step find the same hypotheses of the forced length
    assert rows["resmlp/fast/int8/L1"]["tokens"] == rows["resmlp/onnx/int8/L1"]["tokens"] == 4 * (L + 1)
    if results["versions"]["ctranslate2"] is not None:
        mine, theirs = rows["resmlp/onnx/int8/L1"], rows["transformer/ctranslate2/int8/L1"]
        assert results["equal_length_ratios"]["batch 1, ONNX step int8 / CTranslate2 int8"] == pytest.approx(
            round_ratio(mine, theirs))
        assert "## Equal output length, batch 1" in markdown

    # where a batch-1 sentence's time goes in the ONNX engine: the parts add up to the total
    split = results["batch1_time_split"]
    assert split["sentences"] == 4 and split["steps_per_sentence"] >= 1
    assert set(split["ms"]) == {"decoder_step_graph", "source_graph", "search_and_python"}
    assert split["ms"]["decoder_step_graph"] > 0 and split["ms"]["source_graph"] > 0
    assert sum(split["ms"].values()) == pytest.approx(split["total_ms"])
    assert "Where a batch-1 sentence's time goes" in markdown


def test_averaging_keeps_tied_weights_tied_and_every_checkpoint_counts_them_once(tmp_path):
    """Averaged checkpoints keep the tied embeddings and output projection as one tensor under
    all their keys, as in a trained checkpoint (one storage: loaded back, the keys share it); an
    older averaged file with equal copies still counts them once."""
    import torch

    from benchmarks.bench_decode import checkpoint_info
    from helpers import tiny_model
    from mt_tools.evaluate import average_checkpoints

    model = tiny_model(share_all_embeddings=True)
    unique = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    state = model.state_dict()
    groups = {}
    for key, value in state.items():
        groups.setdefault(value.data_ptr(), []).append(key)
    tied = [keys for keys in groups.values() if len(keys) > 1]
    assert tied  # the embeddings and the output projection
    shifted = {k: v for k, v in state.items()}
    for keys in groups.values():  # a second checkpoint, tied like the first
        moved = state[keys[0]] + 1 if state[keys[0]].is_floating_point() else state[keys[0]]
        shifted.update({k: moved for k in keys})
    paths = []
    copies = {k: v.clone() for k, v in state.items()}  # what key-by-key averaging wrote before
    for name, tensors in (("trained", state), ("shifted", shifted), ("copies", copies)):
        paths.append(tmp_path / f"{name}.pt")
        torch.save({"cfg": {"model": {"arch": "resmlp_mt_small"}}, "model": tensors}, paths[-1])
    averaged = average_checkpoints(paths[:2], tmp_path / "averaged.pt")
    result = torch.load(averaged, map_location="cpu", weights_only=True)["model"]
    for keys in tied:
        assert len({result[k].data_ptr() for k in keys}) == 1, keys
    key = tied[0][0]
    torch.testing.assert_close(result[key], state[key] + 0.5)
    for path in (paths[0], averaged, paths[2]):
        assert checkpoint_info(path)["parameters"] == unique, path.name


def test_equal_copies_of_a_tied_matrix_become_one_tensor_and_nothing_else_does():
    """share_equal_matrices makes the equal copies an old averaged checkpoint holds of a tied matrix
    one tensor again (a file saved from it stores them once); matrices that differ, and equal
    vectors (untrained biases are equal without being tied), stay their own."""
    import io

    import torch

    from helpers import tiny_model
    from resmlp_core.checkpoint import count_parameters, share_equal_matrices

    state = tiny_model(share_all_embeddings=True).state_dict()
    copies = {k: v.clone() for k, v in state.items()}  # what key-by-key averaging wrote before
    embeddings = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
    assert len({copies[k].data_ptr() for k in embeddings}) == 3
    shared = share_equal_matrices(copies)
    assert list(shared) == list(copies) and len({shared[k].data_ptr() for k in embeddings}) == 1
    assert all(torch.equal(shared[k], copies[k]) for k in copies)
    matrices = [k for k, v in copies.items() if v.dim() > 1 and k not in embeddings]
    vectors = [k for k, v in copies.items() if v.dim() == 1 and v.is_floating_point()]
    assert len({shared[k].data_ptr() for k in matrices}) == len(matrices)  # trained apart: all differ
    zeros = [k for k in vectors if not copies[k].any()]
    assert len(zeros) > 1 and len({shared[k].data_ptr() for k in zeros}) == len(zeros)  # equal, not tied

    def saved_bytes(tensors):
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        return buffer.tell()

    table = copies[embeddings[0]].numel() * copies[embeddings[0]].element_size()
    assert saved_bytes(copies) - saved_bytes(shared) >= 2 * table  # the two copies are gone from the file
    assert count_parameters(copies) == count_parameters(shared) == count_parameters(state)


def test_a_ratio_of_two_rows_is_taken_within_each_round():
    """The rows' ratio is the median of their ratios round by round (each round measures both rows
    close in time), not the ratio of their medians, which come from different rounds when the
    machine's speed drifts: rounds of a real page, batch 1, the ResMLP ONNX int8 row against
    CTranslate2 int8 (0.78, where the medians' ratio said 0.89)."""
    def row(speeds):
        return {"tokens_per_second": sorted(speeds)[1], "sentences_per_second": sorted(speeds)[1] / 21,
                "rounds": [{"tokens_per_second": v, "sentences_per_second": v / 21} for v in speeds]}

    ours, theirs = row([1105.2, 845.9, 1250.8]), row([1242.6, 1138.0, 1610.4])
    assert round_ratio(ours, theirs) == pytest.approx(1250.8 / 1610.4)  # rounds: 0.889, 0.743, 0.777
    assert round_ratio(ours, theirs, "sentences") == pytest.approx(1250.8 / 1610.4)
    assert ours["tokens_per_second"] / theirs["tokens_per_second"] == pytest.approx(1105.2 / 1242.6)
    assert round_ratio(ours, ours) == 1.0
    one_round = {**theirs, "rounds": theirs["rounds"][:1]}  # rounds that do not pair: the medians' ratio
    assert round_ratio(ours, one_round) == pytest.approx(1105.2 / 1242.6)


def test_interleaved_rows_decode_in_turn_batch_by_batch():
    """Two rows of a headline pair decode each batch one after the other, alternating which goes
    first; each row's measurement adds up its batches, with the hypotheses back in input order."""
    calls = []

    def engine(name, seconds):
        def run(sources):
            calls.append((name, tuple(sources)))
            return Measurement(seconds * len(sources), [f"{name}:{s}" for s in sources], [len(s) + 1 for s in sources],
                               latencies_ms=[1000 * seconds] * len(sources))
        return run

    texts = TextSet(Path("data"), ["a", "bbbb", "cc", "ddd", "e"], ["r"] * 5)
    ours = Row("resmlp/onnx/int8/L", "equal", "ResMLP", "ONNX step", "int8", 2, texts, engine("ours", 0.5))
    theirs = Row("transformer/ctranslate2/int8/L", "equal", "Transformer", "CTranslate2", "int8", 2, texts,
                 engine("theirs", 1.0))
    other = Row("resmlp/fast/int8/L", "equal", "ResMLP", "fast path", "int8", 2, texts, engine("other", 1.0))
    assert interleaved_pairs([theirs, other, ours]) == [(ours, theirs)]  # the pair in INTERLEAVED's order

    by_length = [0, 4, 2, 3, 1]  # as length_order gives it
    chunks = chunks_of(ours, by_length)
    assert chunks == [[0, 4], [2, 3], [1]]
    measured = interleave((ours, theirs), chunks)
    assert [name for name, _ in calls] == ["ours", "theirs", "theirs", "ours", "ours", "theirs"]
    assert [batch for _, batch in calls[::2]] == [("a", "e"), ("cc", "ddd"), ("bbbb",)]
    for name, m, seconds in (("ours", measured[0], 0.5), ("theirs", measured[1], 1.0)):
        assert m.hypotheses == [f"{name}:{s}" for s in texts.sources]
        assert m.seconds == pytest.approx(5 * seconds) and m.tokens == 5 + 1 + 4 + 2 + 3 + 1
        assert m.latencies_ms == [1000 * seconds] * 5
    assert measured[0].summary()["sentences_per_second"] / measured[1].summary()["sentences_per_second"] == 2.0

    one = Row("resmlp/onnx/int8/L1", "equal_latency", "ResMLP", "ONNX step", "int8", 1, texts, engine("ours", 0.5))
    assert chunks_of(one, []) == [[0], [1], [2], [3], [4]]  # batch 1: sentence by sentence, in input order
    with pytest.raises(ValueError, match="same sentences and batch size"):
        interleave((one, theirs), chunks)
