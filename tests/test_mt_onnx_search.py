"""The whole beam search in ONNX Runtime (resmlp_mt.onnx_search: its BeamSearch operator calling
our encoder and decoder-step graphs): the best hypothesis and its score are fairseq's for every
token mixer, padding side, beam and length penalty; the maximum length ends every hypothesis
with end-of-sentence as fairseq's; int8 runs and stays close; the Python API decodes with it."""

from __future__ import annotations

import pytest
import torch

from helpers import dictionary, eos_biased_folded, eos_biased_model, fairseq_generate, source_batch, tiny_model
from resmlp_mt.fast_generate import fold_for_inference, generate
from resmlp_mt.onnx_search import OnnxSearchModel, SearchDecoderGraph

D = dictionary()


def assert_best_same(ours, theirs):
    """Per sentence, the best hypothesis: the same tokens, the same score (float rounding)."""
    assert [h[0]["tokens"].tolist() for h in ours] == [h[0]["tokens"].tolist() for h in theirs]
    torch.testing.assert_close(torch.stack([h[0]["score"] for h in ours]), torch.stack([h[0]["score"] for h in theirs]),
                               rtol=0, atol=1e-4)


def test_best_hypotheses_and_scores_are_fairseqs():
    lengths = set()
    for seed, strength in ((0, 0.0), (1, 1.0), (2, 1.0), (0, 2.0), (3, 1.0)):
        search = OnnxSearchModel(eos_biased_folded(seed, strength))
        reference = eos_biased_model(seed, strength)
        for beam, lenpen, left_pad in ((4, 1.0, True), (2, 0.6, False), (1, 1.0, False), (5, 1.3, True)):
            src = source_batch(seed, left_pad=left_pad)
            theirs = fairseq_generate(reference, src, beam, lenpen)
            ours = search.generate(src, beam=beam, lenpen=lenpen)
            assert_best_same(ours, theirs)
            assert all(len(h) == beam and all(x["tokens"][-1] == D.eos() for x in h) for h in ours)
            lengths.update(len(h[0]["tokens"]) for h in theirs)
    assert len(lengths) >= 3, f"best hypotheses of too few lengths to test finishing: {sorted(lengths)}"


@pytest.mark.parametrize("options", [
    dict(token_mixer_heads=2),
    dict(token_mixer_positions="relative", token_mixer_kernel=3),
    dict(token_mixer_gate="sgu", token_mixer_normalize="softmax"),
    dict(token_mixer_positions="relative", token_mixer_kernel=3, token_mixer_normalize="softmax",
         token_mixer_heads=2, token_mixer_gate="glu", hybrid_encoder_attention_heads=2),
    dict(token_mixer_positions="relative", token_mixer_gate="glu", token_mixer_weights="dynamic"),
    dict(token_mixer_positions="relative", token_mixer_kernel=2, token_mixer_weights="dynamic", token_mixer_heads=2),
], ids=lambda o: ",".join(f"{k.replace('token_mixer_', '')}={v}" for k, v in o.items()))
def test_every_token_mixer_gives_fairseqs_best_hypotheses(options):
    """Each folded mixer's step inputs at position t are gathered in the decoder graph from t, the
    length of the pasts (position_inputs): the paper's matrix rows, per-head rows, bands, dynamic
    kernels' offsets."""
    model = tiny_model(0, **options)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".token_mixer." in name and not name.endswith("token_mixer.weight"):
                p.add_((0.1 if "dynamic_proj" in name else 0.3) * torch.randn_like(p))
    search = OnnxSearchModel(eos_biased_folded(0, 1.0, model=model))
    reference = eos_biased_model(0, 1.0, model=model)
    for beam, left_pad in ((4, True), (2, False)):
        src = source_batch(1, left_pad=left_pad)
        assert_best_same(search.generate(src, beam=beam), fairseq_generate(reference, src, beam))


def test_the_maximum_length_ends_with_end_of_sentence_as_fairseq():
    """A model that will not end a sentence: at fairseq's maximum length (max_len_a * S + max_len_b,
    at most the positions - 1) only end-of-sentence is allowed, with its own log-probability; the
    operator's length alone would end the hypothesis without it, scored without it."""
    folded, reference = eos_biased_folded(2, -8.0), eos_biased_model(2, -8.0)
    search = OnnxSearchModel(folded)
    src = source_batch(2)
    for max_len_b, max_len_a in ((4, 0.0), (3, 0.5), (200, 0.0)):
        ours = search.generate(src, beam=4, max_len_a=max_len_a, max_len_b=max_len_b)
        theirs = fairseq_generate(reference, src, 4, max_len_a=max_len_a, max_len_b=max_len_b)
        assert_best_same(ours, theirs)
        longest = min(int(max_len_a * src.size(1) + max_len_b), folded.decoder.max_positions() - 1) + 1
        assert {len(h[0]["tokens"]) for h in ours} == {longest}
    assert len(search.sessions) == 3  # one export per maximum length: it is part of the decoder graph


def test_int8_runs_and_stays_close_and_errors_are_clear():
    folded = eos_biased_folded(3, 1.0)
    src = source_batch(3)
    ours, reference = OnnxSearchModel(folded, int8=True).generate(src, beam=4), generate(folded, src, beam=4)
    same = sum(a[0]["tokens"].tolist() == b[0]["tokens"].tolist() for a, b in zip(ours, reference))
    assert same >= len(reference) // 2
    search = OnnxSearchModel(folded)
    with pytest.raises(ValueError, match="longer than the model's --max-source-positions 12"):
        search.generate(torch.full((1, 13), 5))
    with pytest.raises(ValueError, match="no unk_penalty"):
        search.generate(src, unk_penalty=1.0)
    with pytest.raises(ValueError, match="without positional embeddings"):
        SearchDecoderGraph(fold_for_inference(tiny_model(0, positional_embeddings="sinusoidal")).decoder, 0.0, 200)
