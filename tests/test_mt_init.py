"""A sane start: every registered ResMLP translation arch, untrained, puts at most one
bit more than a uniform guess on the target tokens of a real batch (fairseq's Transformer: about
0.6 bits more). Before the fix, the untied-looking start (final Affine at 1, tied embeddings
scaled by sqrt(d)) confidently predicted a copy of the input token: +9.8 bits for
resmlp_mt_small and +19.6 for resmlp_mt on Multi30k."""

from __future__ import annotations


import pytest
from fairseq.models import ARCH_MODEL_INV_REGISTRY

import resmlp_mt  # noqa: F401
from benchmarks import ablate_mt_init
from helpers import prepare_multi30k, write_corpus


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_init")
    raw = write_corpus(root / "raw")
    assert prepare_multi30k(raw, root / "data-bin").returncode == 0
    return root / "data-bin" / "multi30k.en-de"


def initial_nll_bits(data, arch, *flags):
    """Bits per target token of a freshly built ``arch`` on 32 validation pairs, and uniform's."""
    return ablate_mt_init.initial_nll_bits(data, arch, list(flags), pairs=32, positions=64)


ARCHS = sorted(ARCH_MODEL_INV_REGISTRY["resmlp_mt"])


def test_every_arch_is_covered():
    assert {"resmlp_mt", "resmlp_mt_12", "resmlp_mt_small"} <= set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_initial_nll_is_within_one_bit_of_uniform(prepared, arch):
    nll, uniform = initial_nll_bits(prepared, arch)
    assert nll <= uniform + 1.0, f"{arch} starts at {nll:.2f} bits per token, uniform is {uniform:.2f}"


def test_the_old_start_was_a_confident_copy(prepared):
    """The bound is not met by accident: with the final norm at 1 the same batch costs far more."""
    nll, uniform = initial_nll_bits(prepared, "resmlp_mt", "--final-norm-init", "one")
    assert nll > uniform + 3.0
