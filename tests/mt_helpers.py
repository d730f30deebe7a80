"""Test helpers for the translation half: tiny random ResMLP models for the property tests,
and tiny Multi30k-style corpora written by the tests (no shared data needed)."""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path
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


EN = ("a man woman child dog girl boy two people red blue green big small young old runs walks sits "
      "stands plays jumps on in at the park street water beach with ball bike hat shirt near").split()
DE = ("ein mann frau kind hund mädchen junge zwei leute roter blauer grüner großer kleiner junger alter "
      "läuft geht sitzt steht spielt springt auf im am dem park straße wasser strand mit ball rad hut hemd nahe").split()
CORPUS_SIZES = {"train": 300, "val": 12, "test_2016_flickr": 10}


def write_corpus(raw: Path, seed: int = 0, sizes=None) -> Path:
    """Multi30k's file names (``train``/``val``/``test_2016_flickr`` ``.en``/``.de``), short
    sentences over a small vocabulary; the German side translates the English word by word, so
    a model has something to learn."""
    rng = random.Random(seed)
    raw.mkdir(parents=True, exist_ok=True)
    for name, n in (sizes or CORPUS_SIZES).items():
        lines = {"en": [], "de": []}
        for _ in range(n):
            words = [rng.randrange(len(EN)) for _ in range(rng.randint(3, 12))]
            lines["en"].append(" ".join(EN[w] for w in words).capitalize() + ".")
            lines["de"].append(" ".join(DE[w] for w in words).capitalize() + ".")
        for lang, text in lines.items():
            (raw / f"{name}.{lang}").write_text("\n".join(text) + "\n", encoding="utf-8")
    return raw


def run(args, check=True, **kwargs):
    """Run a command (from the repository root unless ``cwd`` is given), capture its output, and
    fail with the command and the tails of its output if it exits non-zero."""
    from conftest import REPO

    kwargs.setdefault("cwd", REPO)
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"command failed ({result.returncode}): {' '.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def tool(name: str) -> str:
    """A console script of the running interpreter's environment (fairseq-train, ...)."""
    return str(Path(sys.executable).parent / name)
