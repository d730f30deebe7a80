"""Tiny random ResMLP translation models for the property tests."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from fairseq.data import Dictionary

import resmlp_mt  # noqa: F401  (registers the model)
from resmlp_mt.model import ResMLPTranslationModel, resmlp_mt_small

VOCAB = 20


def dictionary(size: int = VOCAB) -> Dictionary:
    d = Dictionary()
    for i in range(size):
        d.add_symbol(f"w{i}")
    d.finalize(padding_factor=1)
    return d


def tiny_model(seed: int = 0, **overrides) -> ResMLPTranslationModel:
    """A 2+2-layer, d=16 model over a 24-symbol dictionary, in eval mode."""
    torch.manual_seed(seed)
    args = argparse.Namespace(
        encoder_embed_dim=16,
        encoder_layers=2,
        decoder_layers=2,
        decoder_attention_heads=2,
        max_source_positions=12,
        max_target_positions=12,
        dropout=0.0,
    )
    for key, value in overrides.items():
        setattr(args, key, value)
    resmlp_mt_small(args)
    d = dictionary()
    task = SimpleNamespace(source_dictionary=d, target_dictionary=d)
    model = ResMLPTranslationModel.build_model(args, task)
    # Random (not initial) values everywhere, so that no property holds by accident of init.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta", "_scale", "token_mixer.bias")):
                p.add_(0.3 * torch.randn_like(p))
        for module in model.modules():
            if hasattr(module, "causal"):  # every cross-token layer; the causal ones get a full
                module.weight.normal_(0, 0.3)  # matrix: causality must come from the layer
    return model.eval()


def random_tokens(batch: int, length: int, generator=None) -> torch.Tensor:
    """(batch, length) ids of real symbols (no pad/eos/bos/unk)."""
    d = dictionary()
    return torch.randint(d.nspecial, len(d), (batch, length), generator=generator)
