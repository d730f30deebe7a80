"""The token-mixer options (``resmlp_core/token_mixers.py``, ``--token-mixer-*`` and
``--hybrid-encoder-attention-heads``): the mixing rules on the layer itself, then the properties
of the translation model for every option and a few combinations (incremental decoding equal to
the full pass also after a beam reorder, causality, padding invariance, gradients), the default
being the paper's model, and one real ``fairseq-train`` / ``fairseq-generate`` / export run."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import resmlp_mt  # noqa: F401  (registers the model)
from conftest import REPO
from helpers import (
    assert_same, assert_training_step_reaches_every_parameter, assert_translation_ignores_padding,
    eos_biased_folded, eos_biased_model, fairseq_generate, pad_batch, prepare_multi30k, prev_output,
    random_tokens, run, source_batch, tiny_model, tool, with_eos, write_corpus,
)
from resmlp_core import CrossTokenLinear
from resmlp_core.token_mixers import TokenMixer, build_token_mixer
from resmlp_mt.fast_generate import FoldedDynamicTokenMixer, fold_token_mixing, generate, quantize_int8
from resmlp_mt.onnx_decoder import OnnxModel

# --- the layer --------------------------------------------------------------------------------

LAYER_OPTIONS = [
    dict(),
    dict(heads=2),
    dict(positions="relative"),
    dict(positions="relative", kernel=3),
    dict(kernel=3),
    dict(normalize="softmax"),
    dict(positions="relative", kernel=3, normalize="softmax", heads=2),
    dict(positions="relative", weights="dynamic"),
    dict(positions="relative", kernel=3, normalize="softmax", heads=2, weights="dynamic"),
]


def layer_id(options):
    return ",".join(f"{k}={v}" for k, v in options.items()) or "plain"


def random_mixer(causal, seed=0, num_tokens=10, dim=4, gate="none", **options):
    """A token mixer with random weights and bias (no property holds by accident of init)."""
    torch.manual_seed(seed)
    mixer = build_token_mixer(num_tokens, dim, causal=causal, gate=gate, **options)
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 0.5)
    return mixer


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=layer_id)
def test_softmax_rows_sum_to_one_over_the_positions_they_may_read(options, causal):
    mixer = random_mixer(causal, **dict(options, normalize="softmax"))
    lengths = torch.tensor([7, 4, 1])
    positions = torch.arange(7)
    valid = positions[None, :] < lengths[:, None]  # (B, S): sentences start at position 0
    inputs = torch.randn(7, 3, 4) if mixer.dynamic else None
    weights = mixer.mixing_weights(positions, positions, valid, inputs)  # (B, H, L, L)
    offsets = positions[:, None] - positions[None, :]
    allowed = (offsets >= 0) if causal else torch.ones(7, 7, dtype=torch.bool)
    if mixer.kernel:
        allowed &= offsets.abs() < mixer.kernel
    readable = allowed[None, None] & valid[:, None, None, :]
    assert torch.all(weights[~readable.expand_as(weights)] == 0), "padding, future and out-of-band positions get 0"
    rows = weights.sum(-1)  # (B, H, L)
    has_any = readable.any(-1).expand_as(rows)
    torch.testing.assert_close(rows[has_any], torch.ones_like(rows[has_any]))
    assert torch.all(rows[~has_any] == 0)
    first = rows[:, :, 0]  # position 0 of every sentence reads at least itself
    torch.testing.assert_close(first, torch.ones_like(first))


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("kernel", [0, 3])
def test_relative_mixing_matrix_is_toeplitz_and_banded(kernel, causal):
    mixer = random_mixer(causal, positions="relative", kernel=kernel, heads=2)
    positions = torch.arange(8)
    M = mixer.mixing_weights(positions, positions)  # (H, L, L)
    for t in range(8):
        for s in range(8):
            d = t - s
            inside = (d >= 0 or not causal) and (not kernel or abs(d) < kernel)
            if not inside:
                assert torch.all(M[:, t, s] == 0), (t, s)
            else:  # the same weight on every diagonal
                torch.testing.assert_close(M[:, t, s], M[:, t - min(t, s), s - min(t, s)], rtol=0, atol=0)
    assert torch.count_nonzero(M[0] - M[1]) > 0, "heads have their own weights"
    width = (kernel or 10) if causal else 2 * (kernel or 10) - 1
    assert mixer.weight.shape == (2, width)


def test_heads_mix_their_channel_group_with_their_own_matrix():
    mixer = random_mixer(False, heads=2, dim=6)
    x = torch.randn(5, 2, 6)
    out = mixer(x)
    with torch.no_grad():
        mixer.weight[1].normal_()
    changed = mixer(x)
    torch.testing.assert_close(changed[..., :3], out[..., :3], rtol=0, atol=0)
    assert not torch.allclose(changed[..., 3:], out[..., 3:])
    expected = torch.einsum("ts,sbc->tbc", mixer.weight[0, :5, :5], x[..., :3]) + mixer.bias[:5, None, None]
    torch.testing.assert_close(changed[..., :3], expected)


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_general_mixer_with_the_papers_options_is_the_papers_layer(causal):
    paper = random_mixer(causal)
    assert type(paper) is CrossTokenLinear, "no option set: the paper's layer, its names and arithmetic"
    general = TokenMixer(10, 4, causal=causal)
    general.load_state_dict({"weight": paper.weight[None], "bias": paper.bias})
    x = torch.randn(6, 3, 4)
    torch.testing.assert_close(general(x), paper(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("gate", ["none", "glu", "sgu"])
@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=layer_id)
def test_layer_output_ignores_padding_rows_and_batch_length(options, gate):
    """A sequence of 4 positions padded to 7 with garbage, or alone: the same 4 outputs."""
    mixer = random_mixer(False, gate=gate, **options)
    x = torch.randn(7, 2, 4)
    padding = torch.zeros(7, 2, 1, dtype=torch.bool)
    padding[4:, 0] = True
    out = mixer(x, padding_mask=padding)
    alone = mixer(x[:4, :1])
    torch.testing.assert_close(out[:4, :1], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:, 1:], mixer(x[:, 1:]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("gate", ["none", "glu", "sgu"])
@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=layer_id)
def test_layer_incremental_steps_equal_the_full_pass_also_after_reorder(options, gate):
    mixer = random_mixer(True, gate=gate, **options)
    x = torch.randn(9, 3, 4)
    state, order = {}, torch.tensor([2, 0, 0])
    for t in range(9):
        if t == 5:
            for module in mixer.modules():  # as fairseq's decoders do
                if hasattr(module, "reorder_incremental_state"):
                    module.reorder_incremental_state(state, order)
            x = x.index_select(1, order)
        step = mixer(x[t : t + 1], incremental_state=state)
        torch.testing.assert_close(step, mixer(x[: t + 1])[t:], rtol=0, atol=1e-5, msg=f"step {t}")
    # causality of the full pass: later inputs do not change earlier outputs
    changed = x.clone()
    changed[6:] = torch.randn(3, 3, 4)
    torch.testing.assert_close(mixer(changed)[:6], mixer(x)[:6], rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_banded_causal_relative_mixer_decodes_with_the_last_k_minus_1_inputs(kernel):
    mixer = random_mixer(True, positions="relative", kernel=kernel, normalize="softmax", num_tokens=12)
    x = torch.randn(12, 2, 4)
    full, state = mixer(x), {}
    for t in range(12):
        step = mixer(x[t : t + 1], incremental_state=state)
        torch.testing.assert_close(step, full[t : t + 1], rtol=0, atol=1e-5)
        (buffer,) = [v["inputs"] for v in state.values()]
        assert buffer.size(0) == min(t + 1, kernel - 1), f"step {t}: {buffer.size(0)} inputs kept"
        torch.testing.assert_close(buffer, x[t + 1 - buffer.size(0) : t + 1], rtol=0, atol=0)
    # without a band the whole prefix is kept (the paper's absolute matrix needs it)
    unbanded, state = random_mixer(True, positions="relative", num_tokens=12), {}
    for t in range(12):
        unbanded(x[t : t + 1], incremental_state=state)
    assert [v["inputs"].size(0) for v in state.values()] == [12]


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_dynamic_weights_start_as_the_static_mixer_and_then_follow_each_positions_input(causal):
    static = build_token_mixer(10, 4, causal=causal, positions="relative", kernel=3)
    dynamic = build_token_mixer(10, 4, causal=causal, positions="relative", kernel=3, weights="dynamic")
    dynamic.load_state_dict({**static.state_dict(), "dynamic_proj.weight": dynamic.dynamic_proj.weight})
    assert torch.count_nonzero(dynamic.dynamic_proj.weight) == 0, "the kernel predictor starts at zero"
    x = torch.randn(6, 2, 4)
    torch.testing.assert_close(dynamic(x), static(x), rtol=0, atol=0)
    with torch.no_grad():
        dynamic.dynamic_proj.weight.normal_()
    positions = torch.arange(6)
    M = dynamic.mixing_weights(positions, positions, inputs=x)  # (B, H, L, L)
    W = dynamic.weight.size(1)
    for t in range(6):  # row t: the static kernel plus the one predicted from x[t], at the offsets t - s
        kernel = dynamic.weight[0] + dynamic.dynamic_proj(x[t]).view(2, W)  # (B, W)
        for s_ in range(6):
            d = t - s_ if causal else t - s_ + W // 2
            inside = (t - s_ >= 0 or not causal) and abs(t - s_) < 3
            expected = kernel[:, d] if inside else torch.zeros(2)
            torch.testing.assert_close(M[:, 0, t, s_], expected, msg=f"({t}, {s_})")
    assert not torch.allclose(M[0], M[1]), "two sentences mix with their own weights"
    assert dynamic.dynamic_proj.bias is None, "the static kernel is the predictor's bias"


def test_layer_options_are_checked():
    with pytest.raises(ValueError, match="heads=3 must be positive and divide the 4 channels"):
        build_token_mixer(8, 4, heads=3)
    with pytest.raises(ValueError, match="positions must be one of absolute, relative"):
        build_token_mixer(8, 4, positions="rotary")
    with pytest.raises(ValueError, match="dynamic weights need relative positions"):
        build_token_mixer(8, 4, weights="dynamic")
    with pytest.raises(ValueError, match="weights must be one of static, dynamic"):
        build_token_mixer(8, 4, positions="relative", weights="predicted")
    with pytest.raises(ValueError, match="gate must be one of none, glu, sgu"):
        build_token_mixer(8, 4, gate="swiglu")
    with pytest.raises(ValueError, match="longer than this token mixer supports"):
        build_token_mixer(8, 4, heads=2)(torch.randn(9, 1, 4))


# --- the translation model --------------------------------------------------------------------

MODEL_OPTIONS = [
    dict(token_mixer_heads=2),
    dict(token_mixer_positions="relative"),
    dict(token_mixer_positions="relative", token_mixer_kernel=3),
    dict(token_mixer_normalize="softmax"),
    dict(token_mixer_gate="glu"),
    dict(token_mixer_gate="sgu"),
    dict(hybrid_encoder_attention_heads=2),
    dict(token_mixer_positions="relative", token_mixer_kernel=3, token_mixer_normalize="softmax",
         token_mixer_heads=2, token_mixer_gate="glu"),
    dict(token_mixer_kernel=4, token_mixer_normalize="softmax", token_mixer_gate="sgu",
         hybrid_encoder_attention_heads=2),
    dict(token_mixer_positions="relative", token_mixer_normalize="softmax", token_mixer_gate="sgu",
         token_mixer_heads=4, positional_embeddings="sinusoidal"),
    dict(token_mixer_positions="relative", token_mixer_gate="glu", token_mixer_weights="dynamic"),
    dict(token_mixer_positions="relative", token_mixer_kernel=2, token_mixer_weights="dynamic", token_mixer_heads=2),
    dict(token_mixer_positions="relative", token_mixer_gate="sgu", token_mixer_weights="dynamic",
         token_mixer_heads=4),
    dict(embedding_rank=6),
    dict(embedding_rank=6, share_all_embeddings=True, token_mixer_positions="relative", token_mixer_gate="glu",
         token_mixer_weights="dynamic", token_mixer_heads=4),
]


def model_id(options):
    return ",".join(f"{k.replace('token_mixer_', '')}={v}" for k, v in options.items())


def tiny(seed=0, **options):
    """helpers.tiny_model, with every token-mixer parameter random (gate projections, norms, biases;
    dynamic kernels' predictors less, so that the outputs stay in float32's exact range for 1e-5)."""
    model = tiny_model(seed, **options)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".token_mixer." in name and not name.endswith("token_mixer.weight"):
                p.add_((0.1 if "dynamic_proj" in name else 0.3) * torch.randn_like(p))
    return model


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=model_id)
def test_incremental_decoding_equals_full_pass_also_after_beam_reorder(options):
    model = tiny(**options)
    eos = model.decoder.dictionary.eos()
    src = with_eos(random_tokens(2, 7), eos).repeat_interleave(2, dim=0)
    enc = model.encoder(src)
    tgt = prev_output(random_tokens(4, 10), eos)
    full, _ = model.decoder(tgt, enc)
    state, new_order = {}, torch.tensor([1, 0, 3, 3])
    for t in range(tgt.size(1)):
        if t == 5:
            model.decoder.reorder_incremental_state_scripting(state, new_order)
            enc = model.encoder.reorder_encoder_out(enc, new_order)
            tgt = tgt.index_select(0, new_order)
            full, _ = model.decoder(tgt, enc)
        step, _ = model.decoder(tgt[:, : t + 1], enc, incremental_state=state)
        # float32 rounding: the incremental and full passes sum in different orders (a few ulps of
        # outputs up to about 25 on some CPUs)
        torch.testing.assert_close(step[:, 0], full[:, t], rtol=1e-6, atol=1e-5, msg=f"step {t}")


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=model_id)
def test_decoder_is_causal(options):
    model = tiny(**options)
    eos = model.decoder.dictionary.eos()
    enc = model.encoder(with_eos(random_tokens(2, 6), eos))
    tgt = prev_output(random_tokens(2, 9), eos)
    out, _ = model.decoder(tgt, enc)
    for t in (0, 3, 7):
        changed = tgt.clone()
        changed[:, t + 1 :] = random_tokens(2, tgt.size(1) - t - 1)
        out2, _ = model.decoder(changed, enc)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out2[:, t + 1 :], out[:, t + 1 :]), "later positions depend on later tokens"


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=model_id)
def test_outputs_do_not_depend_on_padding_side_or_batch(options):
    model = tiny(**options)
    d = model.encoder.dictionary
    g = torch.Generator().manual_seed(1)
    sentences = [with_eos(random_tokens(1, n, g), d.eos())[0] for n in (9, 4, 6)]
    alone = [model.encoder(s[None])["encoder_out"][0][:, 0] for s in sentences]
    for left in (True, False):
        out = model.encoder(pad_batch(sentences, d.pad(), left=left))
        for i, ref in enumerate(alone):
            states, mask = out["encoder_out"][0][:, i], out["encoder_padding_mask"][0][i]
            torch.testing.assert_close(states[~mask], ref, rtol=0, atol=1e-5)
            assert torch.all(states[mask] == 0)
    # the decoder: targets right-padded (fairseq) or left-padded, beside other sentences
    enc = model.encoder(with_eos(random_tokens(3, 6, g), d.eos()))
    prefixes = [prev_output(random_tokens(1, n, g), d.eos())[0] for n in (3, 7, 5)]
    right, _ = model.decoder(pad_batch(prefixes, d.pad(), left=False), enc)
    left, _ = model.decoder(pad_batch(prefixes, d.pad(), left=True), enc)
    for i, p in enumerate(prefixes):
        n = len(p)
        single, _ = model.decoder(p[None], model.encoder.reorder_encoder_out(enc, torch.tensor([i])))
        # float32 rounding: the padded and single passes sum in different orders (a few ulps on some CPUs)
        torch.testing.assert_close(right[i, :n], single[0], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(left[i, left.size(1) - n :], single[0], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("options", MODEL_OPTIONS[-6:], ids=model_id)  # the combinations and dynamic weights
def test_beam_search_translation_does_not_depend_on_padding_side_or_batch(options):
    assert_translation_ignores_padding(tiny(**options))


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=model_id)
def test_every_engine_returns_fairseqs_hypotheses(options):
    """The lean search on the model as trained (``engine="exact"``: each mixer's ``forward_last``),
    on its folded decoder (``"fast"``: FoldedTokenMixer) and with that step in ONNX Runtime
    (``"onnx"``) returns fairseq's hypotheses and scores (the folded ones up to float rounding),
    every padding side; int8 runs and stays close."""
    engines = {"exact": eos_biased_model(0, 1.0, model=tiny(**options)),
               "fast": eos_biased_folded(0, 1.0, model=tiny(**options))}
    if options.get("positional_embeddings", "none") == "none":  # (the ONNX engine's condition)
        engines["onnx"] = OnnxModel(engines["fast"])
    reference = eos_biased_model(0, 1.0, model=tiny(**options))
    lengths = set()
    for beam, left_pad in ((4, True), (2, False)):
        src = source_batch(1, left_pad=left_pad)
        theirs = fairseq_generate(reference, src, beam)
        lengths.update(len(h["tokens"]) for hyps in theirs for h in hyps)
        for name, model in engines.items():
            assert_same(generate(model, src, beam=beam), theirs)
    assert len(lengths) >= 2, f"hypotheses of too few lengths: {sorted(lengths)}"
    int8 = generate(quantize_int8(engines["fast"]), source_batch(1), beam=4)
    assert all(hyps and len(hyps[0]["tokens"]) >= 1 for hyps in int8)


@pytest.mark.parametrize("gate", ["none", "glu", "sgu"])
@pytest.mark.parametrize("kernel", [1, 2, 0])
def test_folded_dynamic_step_equals_the_layers_branch_at_every_position(kernel, gate):
    """FoldedDynamicTokenMixer, step by step on its own history (with a band of 1 a step reads one
    row that is out of the band: it must weigh 0), against the layer's full pass."""
    model = tiny(token_mixer_positions="relative", token_mixer_kernel=kernel, token_mixer_weights="dynamic",
                 token_mixer_gate=gate, token_mixer_heads=2)
    layer = model.decoder.layers[0]
    folded = fold_token_mixing(layer)
    assert isinstance(folded, FoldedDynamicTokenMixer)
    T, N, C = 12, 3, 16
    x = torch.randn(T, N, C)
    with torch.no_grad():
        expected = layer.token_scale * layer.token_mixer(layer.token_norm(x))  # (T, N, C)
        history = torch.zeros(1 + T, N, C)
        for t in range(T):
            branch, entry = folded.step(x[t], *folded.step_inputs(history, t))
            history[t + 1] = entry
            torch.testing.assert_close(branch, expected[t], rtol=0, atol=1e-5, msg=f"position {t}")


def test_dynamic_softmax_rows_decode_exactly_and_the_folded_engines_say_they_cannot():
    options = dict(token_mixer_positions="relative", token_mixer_kernel=3, token_mixer_normalize="softmax",
                   token_mixer_weights="dynamic", token_mixer_gate="glu")
    reference = eos_biased_model(0, 1.0, model=tiny(**options))
    src = source_batch(1)
    assert_same(generate(eos_biased_model(0, 1.0, model=tiny(**options)), src, beam=3),
                fairseq_generate(reference, src, 3))
    with pytest.raises(ValueError, match="no step for dynamic token-mixing weights with softmax rows.*engine='exact'"):
        eos_biased_folded(0, 1.0, model=tiny(**options))


@pytest.mark.parametrize("options", MODEL_OPTIONS, ids=model_id)
def test_training_step_gives_every_parameter_a_finite_gradient(options):
    assert_training_step_reaches_every_parameter(tiny(dropout=0.1, attention_dropout=0.1, **options).train())


def test_default_options_are_the_papers_model_with_its_names_and_outputs():
    explicit = dict(token_mixer_heads=1, token_mixer_positions="absolute", token_mixer_kernel=0,
                    token_mixer_normalize="none", token_mixer_gate="none", hybrid_encoder_attention_heads=0)
    paper, default = tiny_model(0), tiny_model(0, **explicit)
    assert default.token_mixing_options == {} and paper.token_mixing_options == {}
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in paper.state_dict().items()}
    for side in (default.encoder, default.decoder):
        assert all(type(layer.token_mixer) is CrossTokenLinear for layer in side.layers)
        assert all(getattr(layer, "self_attn", None) is None for layer in side.layers)
    default.load_state_dict(paper.state_dict())
    src, prev = random_tokens(2, 6), random_tokens(2, 5)
    torch.testing.assert_close(default(src, None, prev)[0], paper(src, None, prev)[0], rtol=0, atol=0)


def test_options_change_the_parameters_as_documented():
    names = lambda m: {k for k in m.state_dict() if k.startswith("decoder.layers.0.token_mixer.")}  # noqa: E731
    shape = lambda m, k: tuple(m.state_dict()[k].shape)  # noqa: E731
    m = tiny(token_mixer_heads=2)
    assert shape(m, "decoder.layers.0.token_mixer.weight") == (2, 12, 12)
    m = tiny(token_mixer_positions="relative", token_mixer_kernel=3)
    assert shape(m, "encoder.layers.0.token_mixer.weight") == (1, 5)
    assert shape(m, "decoder.layers.0.token_mixer.weight") == (1, 3)
    m = tiny(token_mixer_gate="sgu")
    assert names(m) == {f"decoder.layers.0.token_mixer.{k}" for k in (
        "in_proj.weight", "in_proj.bias", "v_norm.weight", "v_norm.bias", "mixer.weight", "mixer.bias")}
    m = tiny(token_mixer_positions="relative", token_mixer_kernel=3, token_mixer_heads=2, token_mixer_weights="dynamic")
    assert shape(m, "encoder.layers.0.token_mixer.dynamic_proj.weight") == (2 * 5, 16)  # H * W offsets, C
    assert shape(m, "decoder.layers.0.token_mixer.dynamic_proj.weight") == (2 * 3, 16)
    assert m.token_mixing_options["--token-mixer-weights"] == "dynamic"
    m = tiny(hybrid_encoder_attention_heads=2)
    assert m.token_mixing_options == {"--hybrid-encoder-attention-heads": 2}
    assert "encoder.layers.1.self_attn.k_proj.weight" in m.state_dict()
    assert not any(".self_attn." in k for k in m.state_dict() if k.startswith("decoder."))
    # --embedding-rank: a (V, R) table, R -> d into each stack, d -> R before the output projection
    m = tiny(embedding_rank=6, share_all_embeddings=True)
    assert shape(m, "encoder.embed_tokens.weight") == shape(m, "decoder.output_projection.weight") == (24, 6)
    assert shape(m, "encoder.project_in_dim.weight") == shape(m, "decoder.project_in_dim.weight") == (16, 6)
    assert shape(m, "decoder.project_out_dim.weight") == (6, 16)
    assert m.decoder.output_projection.weight is m.encoder.embed_tokens.weight
    rows = m.encoder.project_in_dim(m.encoder.embed_tokens.weight[4:])  # as unfactorised rows: N(0, d^-0.5)
    assert 0.8 < float(rows.std()) * 16**0.5 < 1.2
    assert not any("project_" in k for k in tiny().state_dict())
    # a checkpoint of another mixer is refused with the differences
    with pytest.raises(RuntimeError, match=r"(?s)missing keys.*token_mixer\.in_proj"):
        tiny(token_mixer_gate="glu").load_state_dict(tiny_model().state_dict())


@pytest.mark.parametrize("options, message", [
    (dict(token_mixer_heads=3), "--token-mixer-heads 3 must be positive and divide --encoder-embed-dim 16"),
    (dict(token_mixer_kernel=13), "--token-mixer-kernel 13 must be between 1 and --max-source-positions 12"),
    (dict(hybrid_encoder_attention_heads=5), "--hybrid-encoder-attention-heads 5 must divide --encoder-embed-dim 16"),
    (dict(token_mixer_weights="dynamic"), "--token-mixer-weights dynamic needs --token-mixer-positions relative"),
    (dict(embedding_rank=-1), "--embedding-rank -1 must be positive"),
])
def test_bad_options_name_the_flag(options, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**options)


# --- the command-line tools and the Python API ------------------------------------------------

USER_DIR = str(REPO / "resmlp_mt")
OPTIONS_FLAGS = [
    "--token-mixer-heads", "2", "--token-mixer-positions", "relative", "--token-mixer-kernel", "5",
    "--token-mixer-normalize", "softmax", "--token-mixer-gate", "sgu", "--hybrid-encoder-attention-heads", "2",
    "--embedding-rank", "8",
]
TINY_TRAIN = [
    "--user-dir", USER_DIR, "--arch", "resmlp_mt_small", "--encoder-embed-dim", "32", "--encoder-layers", "1",
    "--decoder-layers", "1", "--decoder-attention-heads", "2", "--share-all-embeddings",
    "--max-source-positions", "64", "--max-target-positions", "64", "--optimizer", "adam", "--lr", "5e-3",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "1000",
    "--no-progress-bar", "--log-interval", "1", "--num-workers", "0", "--seed", "1", "--no-epoch-checkpoints",
]


@pytest.mark.slow
def test_a_model_with_every_option_trains_decodes_and_translates_from_python(tmp_path):
    raw = write_corpus(tmp_path / "raw", sizes={"train": 200, "val": 12, "test_2016_flickr": 9})
    assert prepare_multi30k(raw, tmp_path / "data-bin").returncode == 0
    data, ckpt = tmp_path / "data-bin" / "multi30k.en-de", tmp_path / "ckpt"
    train = run([tool("fairseq-train"), data, *TINY_TRAIN, *OPTIONS_FLAGS, "--save-dir", ckpt, "--max-update", "12"])
    log = (train.stdout + train.stderr).replace(" ", "")
    assert "num_updates=12" in log and "--token-mixer-gatesgu--hybrid-encoder-attention-heads2" in log
    generate = run([tool("fairseq-generate"), data, "--user-dir", USER_DIR, "--path", ckpt / "checkpoint_best.pt",
                    "--gen-subset", "test", "--beam", "3", "--batch-size", "4", "--required-batch-size-multiple", "1",
                    "--post-process", "sentencepiece"])
    assert sorted(int(line.split("\t")[0][2:]) for line in generate.stdout.splitlines() if line.startswith("H-")) \
        == list(range(9))

    run([sys.executable, "scripts/export_model.py", ckpt / "checkpoint_best.pt", data, tmp_path / "model"])
    from resmlp_mt import ResMLPTranslationModel

    translator = ResMLPTranslationModel.from_pretrained(tmp_path / "model")
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())  # the card says what the model is
    assert card["parameters"] == sum(p.numel() for p in translator.models[0].parameters())
    assert {k: card["architecture"][k] for k in ("token_mixer_gate", "token_mixer_kernel", "embedding_rank")} \
        == {"token_mixer_gate": "sgu", "token_mixer_kernel": 5, "embedding_rank": 8}
    assert " ".join(OPTIONS_FLAGS) in (tmp_path / "model" / "README.md").read_text()
    sentences = ["A man runs in the park.", "Two dogs play with a ball near the water."]
    exact = translator.translate(sentences, beam=3, engine="exact")
    assert exact == translator.translate(sentences, beam=3, engine="fairseq") and all(exact)
    for engine in ("fast", "onnx"):  # folded (FoldedTokenMixer): float rounding only
        assert translator.translate(sentences, beam=3, engine=engine) == exact
    assert all(translator.quantize().translate(sentences, beam=3))


def test_learned_mixing_weights_of_a_variant_are_drawn_per_layer_and_head():
    """benchmarks.plot_mt_mixing lays out what a variant applies: per layer and head, rows that sum
    to 1 over the positions they read (softmax) and whose weight ratios follow the relative kernel."""
    import numpy as np

    from benchmarks.plot_mt_mixing import mixing_matrices

    options = dict(token_mixer_heads=2, token_mixer_positions="relative", token_mixer_normalize="softmax",
                   token_mixer_gate="glu")
    model = tiny(**options)
    matrices = mixing_matrices(model.state_dict(), 8, options, heads=4)
    assert [t for t, _ in matrices["encoder"]] == [f"encoder layer {i} head {h}" for i in (0, 1) for h in (0, 1)]
    for side in ("encoder", "decoder"):
        for _, m in matrices[side]:
            np.testing.assert_allclose(np.nansum(m, axis=1), 1.0, atol=1e-5)
    kernel = model.encoder.layers[0].token_mixer.mixer.weight[0].detach()  # head 0's weights over offsets
    logits = matrices["encoder"][0][1]
    # an interior row of a relative softmax mixer: ratios of weights are exp(differences of the kernel)
    np.testing.assert_allclose(np.log(logits[4, 3] / logits[4, 5]), float(kernel[12] - kernel[10]), atol=1e-4)


def test_mixing_figure_has_a_row_per_layer_for_heads_and_a_row_per_side_for_one():
    from benchmarks.plot_mt_mixing import panel_rows

    def panels(side, layers, heads):
        return [(f"{side} layer {i} head {h}", None) for i in range(layers) for h in range(min(heads, 4))]

    one = {"encoder": panels("encoder", 3, 1), "decoder": panels("decoder", 2, 1)}
    assert panel_rows(one, 1) == [one["encoder"], one["decoder"]]
    many = {"encoder": panels("encoder", 3, 8), "decoder": panels("decoder", 2, 8)}  # 8 heads: the first 4 drawn
    rows = panel_rows(many, 8)
    assert [len(r) for r in rows] == [4] * 5
    assert [r[0][0] for r in rows] == ["encoder layer 0 head 0", "encoder layer 1 head 0", "encoder layer 2 head 0",
                                       "decoder layer 0 head 0", "decoder layer 1 head 0"]


def build_arch(arch: str, positions: int = 40):
    """``(args, model)``: the registered ``arch`` with ``positions`` source and target positions."""
    import argparse
    from types import SimpleNamespace

    from fairseq.models import ARCH_MODEL_REGISTRY, ARCH_CONFIG_REGISTRY

    from helpers import dictionary

    args = argparse.Namespace(max_source_positions=positions, max_target_positions=positions)
    ARCH_CONFIG_REGISTRY[arch](args)
    d = dictionary()
    return args, ARCH_MODEL_REGISTRY[arch].build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))


@pytest.mark.parametrize("arch, layers, dim", [("resmlp_mt_relative_glu_small", 3, 256),
                                               ("resmlp_mt_relative_glu", 6, 512)])
def test_relative_glu_archs_are_the_papers_design_with_the_relative_glu_mixer(arch, layers, dim):
    args, model = build_arch(arch)
    assert model.token_mixing_options == {"--token-mixer-positions": "relative", "--token-mixer-gate": "glu"}
    assert (args.encoder_layers, args.decoder_layers, args.encoder_embed_dim) == (layers, layers, dim)
    assert tuple(model.decoder.layers[0].token_mixer.mixer.weight.shape) == (1, 40)  # causal: offsets 0 .. 39
    assert tuple(model.encoder.layers[0].token_mixer.mixer.weight.shape) == (1, 79)  # offsets -39 .. 39
    assert tuple(model.encoder.layers[0].token_mixer.in_proj.weight.shape) == (2 * dim, dim)


@pytest.mark.parametrize("arch, layers, dim", [("resmlp_mt_relative_glu_dynamic_small", 3, 256),
                                               ("resmlp_mt_relative_glu_dynamic", 6, 512)])
def test_relative_glu_dynamic_archs_add_dynamic_kernels_in_four_heads(arch, layers, dim):
    args, model = build_arch(arch)
    assert model.token_mixing_options == {"--token-mixer-positions": "relative", "--token-mixer-gate": "glu",
                                          "--token-mixer-weights": "dynamic", "--token-mixer-heads": 4}
    assert (args.encoder_layers, args.decoder_layers, args.encoder_embed_dim) == (layers, layers, dim)
    decoder_mixer = model.decoder.layers[0].token_mixer.mixer
    assert tuple(decoder_mixer.weight.shape) == (4, 40)  # 4 heads, causal offsets 0 .. 39
    assert tuple(decoder_mixer.dynamic_proj.weight.shape) == (4 * 40, dim)  # one kernel per head and position
    assert tuple(model.encoder.layers[0].token_mixer.mixer.dynamic_proj.weight.shape) == (4 * 79, dim)
