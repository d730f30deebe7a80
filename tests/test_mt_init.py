"""A sane start (issue 7): every registered ResMLP translation arch, untrained, puts at most one
bit more than a uniform guess on the target tokens of a real batch (fairseq's Transformer: about
0.6 bits more). Before the fix, the untied-looking start (final Affine at 1, tied embeddings
scaled by sqrt(d)) confidently predicted a copy of the input token: +9.8 bits for
resmlp_mt_small and +19.6 for resmlp_mt on Multi30k."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_INV_REGISTRY

import resmlp_mt  # noqa: F401
from conftest import REPO
from mt_helpers import write_corpus


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_init")
    raw = write_corpus(root / "raw")
    spec = importlib.util.spec_from_file_location("prepare_multi30k", REPO / "scripts" / "prepare_multi30k.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--raw-dir", str(raw), "--destdir-root", str(root / "data-bin"), "--vocab-size", "120", "--workers", "1"]) == 0
    return root / "data-bin" / "multi30k.en-de"


def initial_nll_bits(data, arch, *flags):
    """Mean NLL (bits per target token) of a freshly built ``arch`` on 32 validation pairs, and
    the uniform guess's NLL."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data), "--user-dir", str(REPO / "resmlp_mt"), "--arch", arch,
                                                "--share-all-embeddings", "--max-source-positions", "64",
                                                "--max-target-positions", "64", *flags])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    model = task.build_model(cfg.model).eval()
    dataset = task.dataset("valid")
    sample = dataset.collater([dataset[i] for i in range(min(32, len(dataset)))])
    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    target = sample["target"]
    mask = target.ne(task.target_dictionary.pad())
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[mask].mean().item() / math.log(2)
    return nll, math.log2(len(task.target_dictionary))


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
