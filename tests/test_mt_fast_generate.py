"""The lean beam search (resmlp_mt.fast_generate) returns fairseq's SequenceGenerator hypotheses
token for token, with the same scores, whatever the padding side, beam, length penalty and
positional embeddings; so does it on the folded decoder and with the decoder step in ONNX Runtime
(equal up to float rounding); int8 quantization keeps it running and close."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import (
    assert_same, dictionary, eos_biased_folded, eos_biased_model, fairseq_generate, random_tokens, source_batch,
    tiny_model,
)
from resmlp_mt.fast_generate import (DecoderSteps, FoldedDecoder, SearchRules, fold_for_inference, generate,
                                     quantize_int8)
from resmlp_mt.onnx_decoder import OnnxModel, add_vocabulary_bias, shortlist, shortlist_groups

D = dictionary()


def check_against_fairseq(models, settings) -> None:
    """For each ``(seed, strength)`` of ``models`` and each ``(beam, lenpen, left_pad)`` of
    ``settings``: ``generate`` on ``models[seed, strength]`` returns fairseq's hypotheses on
    :func:`eos_biased_model`; the hypotheses must have at least 3 lengths, so that finishing is tested."""
    lengths = set()
    for (seed, strength), ours in models.items():
        reference = eos_biased_model(seed, strength)
        for beam, lenpen, left_pad in settings:
            src = source_batch(seed, left_pad=left_pad)
            theirs = fairseq_generate(reference, src, beam, lenpen)
            assert_same(generate(ours, src, beam=beam, lenpen=lenpen), theirs)
            lengths.update(len(h["tokens"]) for hyps in theirs for h in hyps)
    assert len(lengths) >= 3, f"hypotheses of too few lengths to test finishing: {sorted(lengths)}"


@pytest.mark.parametrize("beam,lenpen,left_pad", [(4, 1.0, True), (4, 0.6, False), (1, 1.0, True), (5, 1.3, True)])
def test_same_hypotheses_and_scores_as_fairseq(beam, lenpen, left_pad):
    cases = ((0, 0.0), (0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0), (0, 2.0))
    check_against_fairseq({c: eos_biased_model(*c) for c in cases}, [(beam, lenpen, left_pad)])


def test_same_hypotheses_with_sinusoidal_positions():
    model = eos_biased_model(3, 1.0, positional_embeddings="sinusoidal")
    src = source_batch(3)
    assert_same(generate(model, src, beam=4), fairseq_generate(model, src, 4))


def test_int8_model_generates_close_to_float():
    model = eos_biased_model(3, 1.0)
    src = source_batch(3)
    quantized = quantize_int8(model)
    assert not any(type(m) is torch.nn.Linear for m in quantized.modules())
    assert any(type(m) is torch.nn.Linear for m in model.modules())  # the float model is kept
    ours, reference = generate(quantized, src, beam=4), generate(model, src, beam=4)
    same = sum(a[0]["tokens"].tolist() == b[0]["tokens"].tolist() for a, b in zip(ours, reference))
    assert same >= len(reference) // 2


@pytest.mark.parametrize("engine", ["folded", "onnx"])
def test_folded_and_onnx_decoders_give_fairseq_hypotheses(engine):
    """Folding and the ONNX step change float rounding only: on these models (no near ties) the
    hypotheses are fairseq's, scores equal to 1e-5."""
    build = eos_biased_folded if engine == "folded" else (lambda *c: OnnxModel(eos_biased_folded(*c)))
    cases = ((0, 0.0), (1, 1.0), (2, 1.0), (0, 2.0))
    check_against_fairseq({c: build(*c) for c in cases}, [(4, 1.0, True), (2, 0.6, False)])


@pytest.mark.parametrize("engine", ["exact", "folded", "onnx"])
def test_a_step_reads_only_the_history_rows_written_before_it(engine, monkeypatch):
    """The history buffers are not zeroed beyond row 0 (``History``): with every other row and
    the spare buffers NaN from the start, each engine still returns fairseq's hypotheses, sentences
    finishing at different steps (the buffers shrink then) and beams reordering included."""
    from resmlp_mt import fast_generate

    allocate = fast_generate.History.__init__

    def poisoned(self, *args):
        allocate(self, *args)
        for b, spare in zip(self.buffers, self.spare):
            b[1:] = math.nan
            spare.fill_(math.nan)

    monkeypatch.setattr(fast_generate.History, "__init__", poisoned)
    build = {"exact": eos_biased_model, "folded": eos_biased_folded,
             "onnx": lambda *c: OnnxModel(eos_biased_folded(*c))}[engine]
    check_against_fairseq({c: build(*c) for c in ((1, 1.0), (0, 2.0))}, [(4, 1.0, True), (2, 0.6, False)])


def test_fast_and_onnx_engines_run_the_same_step(monkeypatch):
    """The folded step is written once: the ONNX step graph is a trace of
    FoldedDecoder.step_features, which the PyTorch engine's FoldedDecoder.step runs; from the same
    state (prefixes, history, sources) both engines give the same log-probabilities (the graph's
    best 2k, found in its two rounds over the vocabulary's grid) and history entries."""
    calls = []
    step_features = FoldedDecoder.step_features

    def spy(self, *args, **kwargs):
        calls.append(torch.jit.is_tracing())
        return step_features(self, *args, **kwargs)

    monkeypatch.setattr(FoldedDecoder, "step_features", spy)
    folded = eos_biased_folded(3, 1.0)
    onnx = OnnxModel(folded)
    assert calls and all(calls)  # the export traced it
    calls.clear()
    src, k, max_len, t = source_batch(3), 4, 8, 3
    fast_steps, onnx_steps = folded.decoder_steps(src, k, max_len), onnx.decoder_steps(src, k, max_len)
    generator = torch.Generator().manual_seed(0)
    tokens = random_tokens(src.size(0) * k, max_len + 2, generator).view(src.size(0), k, -1).numpy()
    for fast_history, onnx_history in zip(fast_steps.history.buffers, onnx_steps.history.buffers):
        fast_history[1 : t + 1] = torch.randn(t, *fast_history.shape[1:], generator=generator)  # positions 0 .. t-1
        onnx_history.copy_(fast_history)
    bias = SearchRules.of(folded.decoder, src.size(1), k, 0.0, max_len, 1, 1.0, 0.5).vocabulary_bias(t)
    full, short = fast_steps.step(tokens, t, bias), onnx_steps.step(tokens, t, bias)
    assert calls == [False]  # the PyTorch engine ran it, untraced
    assert full.tokens is None and short.tokens.shape == (src.size(0), k, 2 * k)
    short_lprobs, short_tokens = torch.from_numpy(short.lprobs), torch.from_numpy(short.tokens)
    torch.testing.assert_close(short_lprobs, full.lprobs.topk(2 * k, dim=-1).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(short_lprobs, full.lprobs.gather(-1, short_tokens), atol=1e-5, rtol=0)
    for fast_history, onnx_history in zip(fast_steps.history.buffers, onnx_steps.history.buffers):
        assert fast_history[t + 1].abs().sum() > 0
        torch.testing.assert_close(fast_history[: t + 2], onnx_history[: t + 2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("step", [0, 2, 5])
def test_the_step_graph_finds_the_searchs_candidates(step):
    """The ONNX step graph picks the beam search's candidates itself (beam_candidates): from the
    same state they are the ones that DecoderSteps.candidates finds from the graph's shortlist
    (fairseq's choice, its stable sort), at the first step (the first hypothesis only), with
    end-of-sentence masked (min_len 3) and not, and with a dead hypothesis (score -inf)."""
    folded = eos_biased_folded(3, 1.0)
    onnx = OnnxModel(folded)
    src, k, max_len = source_batch(3), 4, 8
    rules = SearchRules.of(folded.decoder, src.size(1), k, 0.0, max_len, 3, 1.0, 0.5)
    generator = torch.Generator().manual_seed(step)
    tokens = random_tokens(src.size(0) * k, max_len + 2, generator).view(src.size(0), k, -1).numpy()
    tokens[:, :, 0] = D.eos()
    if step == 0:  # every hypothesis of a sentence is the same at the start
        tokens[:, 1:] = tokens[:, :1]
    scores = -5 * torch.rand(src.size(0), k, generator=generator)
    scores[0, 1] = -math.inf
    scores = scores.numpy()
    graph, reference = onnx.decoder_steps(src, k, max_len), onnx.decoder_steps(src, k, max_len)
    for ours, theirs in zip(graph.history.buffers, reference.history.buffers):
        ours[1 : step + 1] = torch.randn(step, *ours.shape[1:], generator=generator)
        theirs.copy_(ours)
    found = graph.candidates(tokens, scores, step, rules)
    expected = DecoderSteps.candidates(reference, tokens, scores, step, rules)
    assert found[0].shape == (src.size(0), 2 * k) and (found[2] == D.eos()).any() == (step >= 3)
    for ours, theirs in zip(found, expected):
        np.testing.assert_array_equal(ours, theirs)
    assert not (found[1][0] == 1).any()  # the dead hypothesis continues nowhere


def test_folded_layer_keeps_causality_of_a_full_matrix():
    """tiny_model fills the whole causal matrix: the folded decoder must still read the past only."""
    model = tiny_model(0)
    assert model.decoder.layers[0].token_mixer.weight.triu(1).abs().sum() > 0
    folded = fold_for_inference(model)
    assert torch.equal(folded.decoder.layers[0].mix_weight.triu(1),
                       torch.zeros_like(folded.decoder.layers[0].mix_weight))


def test_onnx_length_limits_and_errors():
    folded = eos_biased_folded(3, 1.0)
    onnx = OnnxModel(folded)
    src = source_batch(3)
    for hyps in generate(onnx, src, beam=4, min_len=5, max_len_b=5):  # forced length: 5 tokens + eos
        assert {len(h["tokens"]) for h in hyps} == {6}
    V = len(folded.decoder.dictionary)
    limit = min(V - 1, shortlist_groups(V)) // 2  # 2k tokens of the vocabulary, 2k of its groups
    assert all(len(hyps) == limit for hyps in generate(onnx, src, beam=limit, max_len_b=3))
    with pytest.raises(ValueError, match=f"beams up to {limit} with a vocabulary of {V} tokens"):
        generate(onnx, src, beam=limit + 1)
    with pytest.raises(ValueError, match="positional embeddings"):
        OnnxModel(tiny_model(0, positional_embeddings="sinusoidal"))
    with pytest.raises(ValueError, match="Affine"):
        fold_for_inference(tiny_model(0, norm="layernorm"))


class _Shortlist(torch.nn.Module):
    """The step graph's end: log-softmax, the masks at their tokens, the best ``2k`` of each of the
    ``n * k`` hypotheses (``k`` read from an input's shape)."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups  # (G, R)

    def forward(self, logits, bias_columns, bias_values, beam_slots):
        lprobs = add_vocabulary_bias(torch.log_softmax(logits.flatten(0, 1), dim=-1), bias_columns, bias_values)
        return shortlist(lprobs, 2 * beam_slots.size(0), self.groups)


def test_two_round_shortlist_is_the_top_k_of_the_vocabulary(tmp_path):
    """The step graph's best 2k tokens come from two rounds over groups of consecutive tokens (the
    groups' maxima, then the candidates of the best groups), after the masks added at their tokens
    only: the same tokens and log-probabilities as a dense add and one top-k over the whole
    vocabulary, in PyTorch and exported to ONNX Runtime with the beam read from the inputs (best
    tokens crowded into one group, into few groups and spread one per group; the masks' -inf and the
    padding's included)."""
    import onnxruntime

    generator = torch.Generator().manual_seed(0)
    V, groups = 1000, 64
    padded = -V % groups + V
    size = padded // groups  # tokens per group
    logits = torch.randn(3, 5, padded, generator=generator) * 4
    logits[..., V:] = -float("inf")  # the padded projection's tokens
    logits[0, 0, :900] = -float("inf")  # a hypothesis whose best tokens crowd into few groups
    logits[1, 2, 37 * size : 38 * size] += 20  # ... into one group
    logits[2, 1, 5::size] += 20  # ... one in each group
    bias_columns = torch.tensor([1, 3, 5, 37 * size + 3, 640])
    bias_values = torch.tensor([-float("inf"), -0.5, -float("inf"), -float("inf"), -float("inf")])
    dense = torch.zeros(padded).index_put((bias_columns,), bias_values)
    path = tmp_path / "shortlist.onnx"
    torch.onnx.export(_Shortlist((groups, size)), (logits, bias_columns, bias_values, torch.zeros(4)), str(path),
                      dynamo=False, input_names=["logits", "columns", "values", "slots"],
                      dynamic_axes={"logits": {0: "n", 1: "k"}, "columns": {0: "m"}, "values": {0: "m"},
                                    "slots": {0: "k"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = torch.log_softmax(logits, dim=-1) + dense
    for k, rows, masks in ((4, 3, 5), (1, 2, 1), (8, 3, 3)):
        feed = {"logits": logits[:rows].numpy(), "columns": bias_columns[:masks].numpy(),
                "values": bias_values[:masks].numpy(), "slots": torch.zeros(k).numpy()}
        expected = (torch.log_softmax(logits[:rows], dim=-1) + torch.zeros(padded).index_put(
            (bias_columns[:masks],), bias_values[:masks])).topk(2 * k, dim=-1)
        ours = _Shortlist((groups, size))(logits[:rows], bias_columns[:masks], bias_values[:masks], torch.zeros(k))
        for values, tokens in (ours, map(torch.from_numpy, session.run(None, feed))):
            assert values.shape == tokens.shape == (rows * 5, 2 * k)
            torch.testing.assert_close(values, expected.values.flatten(0, 1), atol=1e-5, rtol=0)
            assert torch.equal(tokens, expected.indices.flatten(0, 1))
    assert torch.isinf(reference[1, 2, 37 * size + 3])  # the masked token of the crowded group


def test_onnx_int8_generates_close_to_float():
    folded = eos_biased_folded(3, 1.0)
    src = source_batch(3)
    ours, reference = generate(OnnxModel(folded, int8=True), src, beam=4), generate(folded, src, beam=4)
    same = sum(a[0]["tokens"].tolist() == b[0]["tokens"].tolist() for a, b in zip(ours, reference))
    assert same >= len(reference) // 2
