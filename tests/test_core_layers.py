"""The shared vocabulary: Affine, the token mixer (causal, incremental), LayerScale, the state-dict check."""

import pytest
import torch

from resmlp_core import Affine, CrossTokenLinear, add_scaled, check_state_dict_fits, compare_state_dicts, layer_scale


def test_affine_is_per_channel_scale_and_shift():
    aff = Affine(4)
    with torch.no_grad():
        aff.alpha.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]).view(1, 1, 4))
        aff.beta.copy_(torch.tensor([0.0, 1.0, 2.0, -3.0]).view(1, 1, 4))
    x = torch.randn(5, 3, 4)
    expected = x * torch.tensor([1.0, 2.0, -1.0, 0.5]) + torch.tensor([0.0, 1.0, 2.0, -3.0])
    torch.testing.assert_close(aff(x), expected)


def test_cross_token_linear_matches_linear_on_transposed_tokens():
    """(L, B, C) layout gives what nn.Linear(L, L) on the transposed (B, C, L) input gives."""
    torch.manual_seed(0)
    mixer = CrossTokenLinear(7)
    with torch.no_grad():
        mixer.bias.normal_()
    ref = torch.nn.Linear(7, 7)
    ref.load_state_dict(mixer.state_dict())
    x = torch.randn(7, 2, 5)  # (L, B, C)
    expected = ref(x.permute(1, 2, 0)).permute(2, 0, 1)
    torch.testing.assert_close(mixer(x), expected)


def test_shorter_sequence_uses_top_left_block():
    torch.manual_seed(0)
    mixer = CrossTokenLinear(10)
    x = torch.randn(4, 3, 2)
    expected = torch.einsum("ij,jbc->ibc", mixer.weight[:4, :4], x) + mixer.bias[:4, None, None]
    torch.testing.assert_close(mixer(x), expected)


def test_causal_output_ignores_future_tokens():
    torch.manual_seed(0)
    mixer = CrossTokenLinear(8, causal=True)
    with torch.no_grad():
        mixer.weight.normal_()  # a full matrix: causality must come from the layer, not the init
    x = torch.randn(8, 2, 3)
    y = mixer(x)
    x2 = x.clone()
    x2[5:] = torch.randn(3, 2, 3)
    y2 = mixer(x2)
    torch.testing.assert_close(y[:5], y2[:5])
    assert not torch.allclose(y[5:], y2[5:])


def test_causal_init_has_empty_upper_triangle():
    mixer = CrossTokenLinear(6, causal=True)
    assert torch.count_nonzero(mixer.weight.triu(1)) == 0
    assert torch.count_nonzero(mixer.weight.tril()) > 0


def test_forward_last_equals_full_forward():
    torch.manual_seed(0)
    mixer = CrossTokenLinear(9, causal=True)
    with torch.no_grad():
        mixer.bias.normal_()
    x = torch.randn(6, 2, 3)
    full = mixer(x)
    for t in range(6):
        torch.testing.assert_close(mixer.forward_last(x[: t + 1]), full[t : t + 1])


def test_too_long_input_names_the_limit():
    mixer = CrossTokenLinear(4)
    with pytest.raises(ValueError, match="5 tokens is longer than .* supports \\(4\\)"):
        mixer(torch.randn(5, 1, 2))
    with pytest.raises(ValueError, match="longer than"):
        CrossTokenLinear(4, causal=True).forward_last(torch.randn(5, 1, 2))


def test_state_dict_comparison_names_every_difference_with_counts():
    model = {"a": torch.zeros(2), "b": torch.zeros(3), "head.weight": torch.zeros(4, 2)}
    checkpoint = {"b": torch.zeros(5), "c": torch.zeros(1), "head.weight": torch.zeros(10, 2)}
    diff = compare_state_dicts(model, checkpoint, ignore_shapes=["head.weight"])
    assert diff.missing == ["a"] and diff.unexpected == ["c"] and diff.mismatched == [("b", (5,), (3,))]
    assert diff.lines(checkpoint="file") == [
        "missing keys (1): a",
        "unexpected keys (1): c",
        "shape mismatches (1): b: (5,) in the file, (3,) in the model",
    ]
    assert not compare_state_dicts(model, dict(model))
    many = compare_state_dicts({}, {f"k{i}": torch.zeros(1) for i in range(5)})
    assert many.lines(limit=2) == ["unexpected keys (5): k0, k1, ... and 3 more"]


def test_incremental_step_and_beam_reorder_without_fairseq():
    """The causal mixer's one-position step keeps its inputs in a plain dict; reordering the
    batch (beam search) gives what the full pass over the reordered inputs gives."""
    torch.manual_seed(0)
    mixer = CrossTokenLinear(8, causal=True)
    with torch.no_grad():
        mixer.bias.normal_()
    x = torch.randn(5, 3, 4)
    state: dict = {}
    steps = [mixer(x[t : t + 1], incremental_state=state) for t in range(3)]
    torch.testing.assert_close(torch.cat(steps), mixer(x[:3]))
    order = torch.tensor([2, 2, 0])
    mixer.reorder_incremental_state(state, order)
    x = x.index_select(1, order)
    steps += [mixer(x[t : t + 1], incremental_state=state) for t in range(3, 5)]
    torch.testing.assert_close(torch.cat(steps[3:]), mixer(x)[3:])
    with pytest.raises(ValueError, match="causal"):
        CrossTokenLinear(4)(x[:1], incremental_state={})


def test_layer_scale_residual_is_x_plus_scale_times_branch():
    scale = layer_scale(3, 0.2)
    assert scale.shape == (3,) and torch.equal(scale.detach(), torch.full((3,), 0.2))
    x, branch = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    torch.testing.assert_close(add_scaled(x, branch, scale), x + scale * branch)


def test_state_dict_check_raises_the_given_error_with_header_differences_and_hints():
    model = {"a": torch.zeros(2), "b": torch.zeros(3)}
    check_state_dict_fits(model, dict(model), "unused")
    with pytest.raises(RuntimeError) as info:
        check_state_dict_fits(model, {"b": torch.zeros(4)}, "does not fit:", checkpoint="file",
                              hints=lambda diff: [f"{len(diff.mismatched)} resized"], error=RuntimeError)
    assert str(info.value) == ("does not fit:\n  missing keys (1): a\n"
                               "  shape mismatches (1): b: (4,) in the file, (3,) in the model\n  1 resized")
