"""Properties of the ResMLP translation model, on tiny random models.

Causality, incremental decoding (also after a beam reorder), padding invariance of the encoder
and of beam-search translations, gradients, and the error messages of bad input.
"""

import pytest
import torch

from helpers import (
    assert_training_step_reaches_every_parameter, assert_translation_ignores_padding, pad_batch, prev_output,
    random_tokens, tiny_model, with_eos,
)

VARIANTS = [
    dict(),
    dict(norm="layernorm"),
    dict(positional_embeddings="learned"),
    dict(positional_embeddings="sinusoidal", share_all_embeddings=True),
]








@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_decoder_is_causal(overrides):
    model = tiny_model(**overrides)
    eos = model.decoder.dictionary.eos()
    src = with_eos(random_tokens(2, 6), eos)
    enc = model.encoder(src)
    tgt = prev_output(random_tokens(2, 9), eos)
    out, _ = model.decoder(tgt, enc)
    for t in range(tgt.size(1) - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = random_tokens(2, tgt.size(1) - t - 1)
        out2, _ = model.decoder(changed, enc)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out2[:, t + 1 :], out[:, t + 1 :]), "later positions must depend on later tokens"


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_incremental_decoding_equals_full_forward_also_after_beam_reorder(overrides):
    model = tiny_model(**overrides)
    eos = model.decoder.dictionary.eos()
    # two source sentences, beam 2: rows 0-1 are beams of sentence 0, rows 2-3 of sentence 1
    src = with_eos(random_tokens(2, 7), eos).repeat_interleave(2, dim=0)
    enc = model.encoder(src)
    tgt = prev_output(random_tokens(4, 9), eos)
    full, _ = model.decoder(tgt, enc)

    state = {}
    # as beam search does: each sentence's hypotheses are reordered among themselves
    reorder_at, new_order = 4, torch.tensor([1, 0, 3, 3])
    for t in range(tgt.size(1)):
        if t == reorder_at:
            model.decoder.reorder_incremental_state_scripting(state, new_order)
            enc = model.encoder.reorder_encoder_out(enc, new_order)
            tgt = tgt.index_select(0, new_order)
            full, _ = model.decoder(tgt, enc)
        step, _ = model.decoder(tgt[:, : t + 1], enc, incremental_state=state)
        assert step.shape == (4, 1, full.size(-1))
        torch.testing.assert_close(step[:, 0], full[:, t], rtol=0, atol=1e-5, msg=f"step {t}")


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_encoder_output_does_not_depend_on_padding_side_or_batch(overrides):
    model = tiny_model(**overrides)
    d = model.encoder.dictionary
    g = torch.Generator().manual_seed(1)
    sentence = with_eos(random_tokens(1, 4, g), d.eos())[0]
    others = [with_eos(random_tokens(1, n, g), d.eos())[0] for n in (9, 6)]
    alone = model.encoder(sentence[None])["encoder_out"][0][:, 0]  # (5, C)
    assert alone.abs().sum() > 0
    for left in (True, False):
        batch = pad_batch([others[0], sentence, others[1]], d.pad(), left=left)
        out = model.encoder(batch)
        states, mask = out["encoder_out"][0][:, 1], out["encoder_padding_mask"][0][1]
        torch.testing.assert_close(states[~mask], alone, rtol=0, atol=1e-5)
        assert torch.all(states[mask] == 0), "padding positions are zero"
        # the other sentences are unaffected by the padding too
        alone0 = model.encoder(others[0][None])["encoder_out"][0][:, 0]
        torch.testing.assert_close(out["encoder_out"][0][:, 0], alone0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides", VARIANTS[:2], ids=["default", "layernorm"])
def test_translation_does_not_depend_on_padding_side_or_batch(overrides):
    assert_translation_ignores_padding(tiny_model(**overrides))


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_training_step_gives_every_parameter_a_gradient_and_no_nan(overrides):
    model = tiny_model(dropout=0.1, activation_dropout=0.1, attention_dropout=0.1, **overrides).train()
    assert_training_step_reaches_every_parameter(model)


def test_source_longer_than_max_positions_names_the_flag():
    model = tiny_model()
    with pytest.raises(ValueError, match="longer than the model's --max-source-positions 12"):
        model.encoder(random_tokens(1, 13))


def test_checkpoint_of_another_shape_lists_the_differences():
    small = tiny_model()
    other = tiny_model(max_source_positions=20)
    with pytest.raises(RuntimeError, match=r"(?s)shape mismatches \(\d+\): encoder\.layers\.0\.token_mixer\.bias"
                                           r".*--max-source-positions"):
        small.load_state_dict(other.state_dict())
    transformer_like = {"encoder.layers.0.self_attn.k_proj.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match=r"not a ResMLP translation model(?s:.*)unexpected keys \(\d+\): "
                                           r".*encoder.layers.0.self_attn"):
        small.load_state_dict(transformer_like)



def test_decoder_output_does_not_depend_on_target_padding_side():
    """fairseq right-pads targets; --left-pad-target True left-pads them: same outputs."""
    model = tiny_model()
    d = model.decoder.dictionary
    g = torch.Generator().manual_seed(4)
    src = with_eos(random_tokens(3, 6, g), d.eos())
    enc = model.encoder(src)
    prefixes = [prev_output(random_tokens(1, n, g), d.eos())[0] for n in (3, 7, 5)]
    right, _ = model.decoder(pad_batch(prefixes, d.pad(), left=False), enc)
    left, _ = model.decoder(pad_batch(prefixes, d.pad(), left=True), enc)
    for i, p in enumerate(prefixes):
        n = len(p)
        torch.testing.assert_close(left[i, left.size(1) - n :], right[i, :n], rtol=0, atol=1e-5)


def test_fairseq_checkpoints_stay_loadable_after_a_scoped_allow_list(tmp_path):
    """timm loads its checkpoints inside ``safe_globals([argparse.Namespace])``; leaving that
    context removes argparse.Namespace from torch's allow-list. A fairseq checkpoint (legacy
    config stored as a Namespace) must still load weights-only afterwards in the same process
    (the CI failure of a suite that ran vision and translation tests in one worker)."""
    import argparse

    import resmlp_mt  # noqa: F401

    path = tmp_path / "checkpoint.pt"
    torch.save({"args": argparse.Namespace(arch="resmlp_mt_small"), "model": {}}, path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        pass
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert loaded["args"].arch == "resmlp_mt_small"


def test_state_dict_names_of_a_layer_are_those_of_earlier_checkpoints():
    """Checkpoints written before the shared token mixer (resmlp_core.CrossTokenLinear, causal in
    the decoder) load: the parameter names of the layers are unchanged."""
    state = tiny_model().state_dict()
    decoder = sorted(k[len("decoder.layers.0."):] for k in state if k.startswith("decoder.layers.0."))
    assert decoder == sorted([
        "token_norm.alpha", "token_norm.beta", "token_mixer.weight", "token_mixer.bias", "token_scale",
        "cross_attn_norm.alpha", "cross_attn_norm.beta",
        *(f"cross_attn.{p}_proj.{w}" for p in "kvq" for w in ("weight", "bias")),
        "cross_attn.out_proj.weight", "cross_attn.out_proj.bias",
        "cross_attn_scale", "channel_norm.alpha", "channel_norm.beta",
        "channel_mlp.fc1.weight", "channel_mlp.fc1.bias", "channel_mlp.fc2.weight", "channel_mlp.fc2.bias",
        "channel_scale",
    ])
    encoder = sorted(k[len("encoder.layers.0."):] for k in state if k.startswith("encoder.layers.0."))
    assert encoder == sorted(k for k in decoder if not k.startswith("cross_attn"))


def test_freeze_token_mixers_leaves_only_the_mixers_without_gradient():
    """``--freeze-token-mixers`` (the Adagrad ablation of scripts/adagrad_stability.sh): every
    cross-token matrix and bias, and nothing else, is left out of training."""
    model = tiny_model(0, freeze_token_mixers=True)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    mixers = {n for n, _ in model.named_parameters() if ".token_mixer." in n}
    assert frozen == mixers and len(mixers) == 2 * (2 + 2)  # weight and bias of 2 + 2 layers
    assert all(p.requires_grad for _, p in tiny_model(0).named_parameters())
