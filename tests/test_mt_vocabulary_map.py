"""Vocabulary maps (resmlp_mt.vocabulary_map): what the builder keeps, the vmap file read back as
written and refused with its line where it is not one, and the ONNX engine restricted by a map:
with every token a candidate it is the unrestricted engine; with fewer, it is the folded model
whose logits outside the batch's candidates are -inf (log-probabilities normalised over the
candidates), hypotheses and scores alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_same, dictionary, eos_biased_folded, source_batch, tiny_model
from resmlp_mt.fast_generate import generate
from resmlp_mt.onnx_decoder import OnnxModel
from resmlp_mt.vocabulary_map import (VocabularyMap, VocabularyMapError, build_vocabulary_map, coverage,
                                      cooccurrence_counts)

D = dictionary()  # 0 <s>, 1 <pad>, 2 </s>, 3 <unk>, then w0 .. w19
W = {f"w{i}": D.index(f"w{i}") for i in range(20)}


def ids(*words):
    return np.array([W[w] for w in words] + [D.eos()])


def corpus():
    """w0 always comes with w10, w1 with w11 (w1 once also with w12), w5 is in every target."""
    return ([(ids("w0", "w2"), ids("w10", "w5"))] * 3 + [(ids("w1", "w2"), ids("w11", "w5"))] * 2
            + [(ids("w1"), ids("w12", "w5"))])


def test_cooccurrence_counts_count_each_token_once_per_pair():
    pairs = [(ids("w0", "w0"), ids("w10", "w10")), (ids("w0"), ids("w11"))]
    keys, counts, source_counts, target_counts = cooccurrence_counts(pairs, len(D), chunk=1)
    found = dict(zip(keys.tolist(), counts.tolist()))
    assert found[W["w0"] * len(D) + W["w10"]] == 1 and found[W["w0"] * len(D) + W["w11"]] == 1
    assert source_counts[W["w0"]] == 2 and target_counts[W["w10"]] == 1 and target_counts[D.eos()] == 2


def test_builder_keeps_the_targets_that_come_with_a_source():
    vmap = build_vocabulary_map(corpus(), D, D, per_source=1, frequent=1, min_count=2)
    assert set(vmap.always.tolist()) == {D.eos(), D.unk(), W["w5"]}  # the most frequent target, and the specials
    assert vmap.rules[W["w0"]].tolist() == [W["w10"]]
    assert vmap.rules[W["w1"]].tolist() == [W["w11"]]  # p(w11 | w1) = 2/3 > p(w12 | w1); w12 seen once only
    assert D.eos() not in vmap.rules and not any(D.eos() in r.tolist() for r in vmap.rules.values())
    # w2 comes with w10 three times and w11 twice: its best is w10; with two per source it gets both
    assert build_vocabulary_map(corpus(), D, D, per_source=2, frequent=1, min_count=2).rules[W["w2"]].tolist() == [
        W["w10"], W["w11"]]
    assert W["w12"] in build_vocabulary_map(corpus(), D, D, per_source=3, frequent=1, min_count=1).rules[W["w1"]]
    with pytest.raises(ValueError, match="min_count"):
        build_vocabulary_map(corpus(), D, D, min_count=0)


def test_candidates_are_the_sorted_union_of_the_batch_and_the_always():
    vmap = VocabularyMap([D.eos(), D.unk(), W["w5"]], {W["w0"]: [W["w10"], W["w11"]], W["w1"]: [W["w11"]]},
                         len(D))
    src = torch.tensor([[W["w1"], W["w3"], D.eos()], [D.pad(), W["w0"], D.eos()]])
    assert vmap.candidates(src).tolist() == sorted([D.eos(), D.unk(), W["w5"], W["w10"], W["w11"]])
    assert vmap.candidates(torch.tensor([[W["w3"], D.eos()]])).tolist() == sorted([D.eos(), D.unk(), W["w5"]])
    held_out = [(ids("w0"), ids("w10", "w5")), (ids("w1"), ids("w12"))]
    c = coverage(vmap, held_out)
    assert c["tokens"] == pytest.approx(4 / 5) and c["sentences"] == pytest.approx(0.5)  # w12 is not covered


def test_vmap_file_is_read_back_as_written(tmp_path):
    vmap = build_vocabulary_map(corpus(), D, D, per_source=2, frequent=1, min_count=1)
    path = tmp_path / "vmap.txt"
    vmap.write(path, D, D)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("\t") and "w5" in lines[0].split()  # CTranslate2's always-candidates line
    assert "w0\tw10" in lines
    back = VocabularyMap.read(path, D, D)
    assert back.always.tolist() == vmap.always.tolist()
    assert {s: r.tolist() for s, r in back.rules.items()} == {s: r.tolist() for s, r in vmap.rules.items()}


@pytest.mark.parametrize("text,message", [
    ("\tw5\nw0 w1\tw10\n", r"vmap.txt:2: a rule for the n-gram 'w0 w1'"),
    ("w0 w10\n", r"vmap.txt:1: no tab"),
])
def test_a_file_that_is_not_a_unigram_vmap_is_refused_with_its_line(tmp_path, text, message):
    path = tmp_path / "vmap.txt"
    path.write_text(text)
    with pytest.raises(VocabularyMapError, match=message):
        VocabularyMap.read(path, D, D)
    with pytest.raises(VocabularyMapError, match="no such file"):
        VocabularyMap.read(tmp_path / "missing.txt", D, D)


def test_unknown_pieces_are_left_out(tmp_path):
    path = tmp_path / "vmap.txt"
    path.write_text("\tw5 nosuchpiece\nw0\tw10 other\nnosource\tw11\n")
    vmap = VocabularyMap.read(path, D, D)
    assert set(vmap.always.tolist()) == {D.eos(), D.unk(), W["w5"]}
    assert {s: r.tolist() for s, r in vmap.rules.items()} == {W["w0"]: [W["w10"]]}


def restricted_reference(folded, candidates):
    """The folded model with -inf logits outside ``candidates``: log_softmax over the candidates."""
    outside = torch.ones(len(D), dtype=torch.bool)
    outside[candidates] = False
    with torch.no_grad():
        folded.decoder.output_projection.bias[outside] = -float("inf")
    return folded


def test_a_map_with_every_token_is_the_unrestricted_engine():
    vmap = VocabularyMap(range(len(D)), {}, len(D))
    src = source_batch(3)
    assert_same(generate(OnnxModel(eos_biased_folded(3, 1.0), vocabulary_map=vmap), src, beam=4),
                generate(OnnxModel(eos_biased_folded(3, 1.0)), src, beam=4))


@pytest.mark.parametrize("seed,strength", [(3, 1.0), (1, 1.0), (0, 2.0)])
def test_restricted_engine_scores_the_candidates_only(seed, strength):
    src = source_batch(seed, length=5)  # short sentences: some words are not in the batch
    present = sorted(set(src.flatten().tolist()) - {D.pad(), D.eos()})
    # always: the specials and 12 words; rules for two source words of the batch add 2 more, the
    # rule of a word that is not in the batch adds nothing
    absent = [t for t in W.values() if t not in present]
    rules = {present[0]: [W["w18"]], present[1]: [W["w19"]], absent[0]: [W["w15"]]}
    vmap = VocabularyMap([D.eos(), D.unk(), *[W[f"w{i}"] for i in range(12)]], rules, len(D))
    candidates = vmap.candidates(src)
    assert {W["w18"], W["w19"]} <= set(candidates.tolist()) and W["w15"] not in candidates.tolist()
    assert 8 <= len(candidates) < len(D)  # restricted, yet wide enough for the top-k of beam 4
    ours = generate(OnnxModel(eos_biased_folded(seed, strength), vocabulary_map=vmap), src, beam=4)
    reference = generate(restricted_reference(eos_biased_folded(seed, strength), candidates), src, beam=4)
    assert_same(ours, reference)
    outputs = {t for hyps in ours for h in hyps for t in h["tokens"].tolist()}
    assert outputs <= set(candidates.tolist())
    unrestricted = generate(OnnxModel(eos_biased_folded(seed, strength)), src, beam=4)
    assert any(not torch.equal(a[0]["score"], b[0]["score"]) for a, b in zip(ours, unrestricted))


def test_int8_restricted_engine_stays_in_the_candidates_and_close_to_float():
    src = source_batch(3)
    vmap = VocabularyMap([D.eos(), D.unk(), *[W[f"w{i}"] for i in range(14)]], {}, len(D))
    candidates = set(vmap.candidates(src).tolist())
    ours = generate(OnnxModel(eos_biased_folded(3, 1.0), int8=True, vocabulary_map=vmap), src, beam=4)
    reference = generate(OnnxModel(eos_biased_folded(3, 1.0), vocabulary_map=vmap), src, beam=4)
    assert {t for hyps in ours for h in hyps for t in h["tokens"].tolist()} <= candidates
    same = sum(a[0]["tokens"].tolist() == b[0]["tokens"].tolist() for a, b in zip(ours, reference))
    assert same >= len(reference) // 2


def test_a_factorised_output_layer_is_restricted_to_its_rank_rows():
    """With ``--embedding-rank`` the step graph takes the candidates' rows of the ``R``-wide output
    projection (float, and int8 rows in the int8 graph); the restricted engine is still the folded
    model restricted."""
    src = source_batch(3, length=5)
    vmap = VocabularyMap([D.eos(), D.unk(), *[W[f"w{i}"] for i in range(12)]], {}, len(D))
    candidates = vmap.candidates(src)
    folded = lambda: eos_biased_folded(0, 1.0, model=tiny_model(3, embedding_rank=6))  # noqa: E731
    assert folded().decoder.output_projection.in_features == 6
    ours = generate(OnnxModel(folded(), vocabulary_map=vmap), src, beam=4)
    assert_same(ours, generate(restricted_reference(folded(), candidates), src, beam=4))
    int8 = generate(OnnxModel(folded(), int8=True, vocabulary_map=vmap), src, beam=4)
    assert {t for hyps in int8 for h in hyps for t in h["tokens"].tolist()} <= set(candidates.tolist())


def test_a_map_of_another_dictionary_is_refused():
    with pytest.raises(ValueError, match="dictionary of 30 tokens"):
        OnnxModel(eos_biased_folded(3, 1.0), vocabulary_map=VocabularyMap([2], {}, 30))
