"""The one helper module of the tests (test files import from here and from ``conftest``, never
from each other).

* commands: :func:`run` (a command from the repository root, failing with its output),
  :func:`prepare_multi30k` (the data preparation script on a test corpus),
  :func:`tool` (a console script of the running environment: fairseq-train, ...),
  :func:`run_module` (``python -m vision.train ...``);
* translation: tiny random ResMLP models for the property tests (:func:`tiny_model`; batches:
  :func:`pad_batch`, :func:`with_eos`, :func:`prev_output`), and small
  Multi30k-style corpora written by the tests (:func:`write_corpus`, as fairseq's
  ``tests/utils.py`` ``create_dummy_data``), so that the command-line tests need no shared data;
* vision: the tiny model and fast flags of the training CLI, slices of a real image folder.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from conftest import REPO

#: A process id no process has (above Linux's PID_MAX_LIMIT): the writer of a stale temporary.
DEAD_PID = 2**22 + 1

# --- commands ---------------------------------------------------------------------------------


def run(args, check: bool = True, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run a command (from the repository root unless ``cwd`` is given; ``env`` adds to the
    environment), capture its output as text (``text=False`` for bytes), and fail with the
    command and the tails of its output if it exits non-zero."""
    kwargs.setdefault("cwd", REPO)
    kwargs.setdefault("text", True)
    if env is not None:
        env = dict(os.environ, **env)
    result = subprocess.run([str(a) for a in args], capture_output=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"command failed ({result.returncode}): {' '.join(map(str, args))}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def prepare_multi30k(raw, dest_root, *flags, vocab_size: int = 120) -> subprocess.CompletedProcess:
    """``scripts/prepare_multi30k.py`` on the raw corpus ``raw`` into ``dest_root`` (one worker, a
    vocabulary of ``vocab_size``; ``flags`` added), as a user runs it; the caller checks the
    return code and the output."""
    return run([sys.executable, "scripts/prepare_multi30k.py", "--raw-dir", raw, "--destdir-root", dest_root,
                "--vocab-size", str(vocab_size), "--workers", "1", *flags], check=False)


def tool(name: str) -> str:
    """A console script of the running interpreter's environment (fairseq-train, ...)."""
    return str(Path(sys.executable).parent / name)


def run_module(*args: str, check: bool = True, module: str = "vision.train",
               launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` (or ``LAUNCHER MODULE ARGS``, e.g. torchrun)."""
    return run([*(launcher or [sys.executable, "-m"]), module, *args], check=check, cwd=None, timeout=600)


# --- translation: tiny models -----------------------------------------------------------------

VOCAB = 20


def dictionary(size: int = VOCAB):
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(size):
        d.add_symbol(f"w{i}")
    d.finalize(padding_factor=1)
    return d


def tiny_model(seed: int = 0, **overrides):
    """A 2+2-layer, d=16 ResMLPTranslationModel over a 24-symbol dictionary, in eval mode."""
    import resmlp_mt  # noqa: F401  (registers the model)
    from resmlp_mt.model import ResMLPTranslationModel, resmlp_mt_small

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


def pad_batch(sentences, pad, left):
    """(B, max_len) batch of 1-D token tensors, padded on the left or the right."""
    width = max(len(s) for s in sentences)
    out = torch.full((len(sentences), width), pad, dtype=torch.long)
    for i, s in enumerate(sentences):
        if left:
            out[i, width - len(s):] = s
        else:
            out[i, : len(s)] = s
    return out


def with_eos(tokens, eos):
    return torch.cat([tokens, torch.full((tokens.size(0), 1), eos)], dim=1)


def prev_output(tokens, eos):
    return torch.cat([torch.full((tokens.size(0), 1), eos), tokens], dim=1)


# --- translation: corpora ---------------------------------------------------------------------

WORDS = {
    "en": ("a man woman child dog girl boy two people red blue green big small young old runs walks sits "
           "stands plays jumps on in at the park street water beach with ball bike hat shirt near").split(),
    "de": ("ein mann frau kind hund mädchen junge zwei leute roter blauer grüner großer kleiner junger alter "
           "läuft geht sitzt steht spielt springt auf im am dem park straße wasser strand mit ball rad hut hemd "
           "nahe").split(),
    "fr": ("un homme femme enfant chien fille garçon deux gens rouge bleu vert grand petit jeune vieux court marche "
           "assis debout joue saute sur dans au le parc rue eau plage avec balle vélo chapeau chemise près").split(),
}
CORPUS_SIZES = {"train": 300, "val": 12, "test_2016_flickr": 10}


def _made_up_words(n: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def write_corpus(raw: Path, seed: int = 0, sizes=None, langs=("en", "de"), long_every: int = 0,
                 extra_words: int = 0) -> Path:
    """Multi30k's file names (``train``/``val``/``test_2016_flickr`` ``.<lang>``), short sentences
    over a small vocabulary; every language translates the first word by word, so a model has
    something to learn.

    ``long_every``: every N-th sentence has 30 to 45 words (for the length limits);
    ``extra_words``: that many made-up words more per language (for a larger BPE vocabulary)."""
    rng = random.Random(seed)
    vocab = {lang: list(WORDS[lang]) for lang in langs}
    if extra_words:
        made_up = _made_up_words(extra_words * len(langs), random.Random(seed + 1))
        for i, lang in enumerate(langs):
            vocab[lang] += made_up[i * extra_words : (i + 1) * extra_words]
    size = min(len(v) for v in vocab.values())
    raw.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, n in (sizes or CORPUS_SIZES).items():
        lines = {lang: [] for lang in langs}
        for _ in range(n):
            count += 1
            length = rng.randint(30, 45) if long_every and count % long_every == 0 else rng.randint(3, 12)
            words = [rng.randrange(size) for _ in range(length)]
            for lang in langs:
                lines[lang].append(" ".join(vocab[lang][w] for w in words).capitalize() + ".")
        for lang, text in lines.items():
            (raw / f"{name}.{lang}").write_text("\n".join(text) + "\n", encoding="utf-8")
    return raw


# --- vision -----------------------------------------------------------------------------------

TINY_MODEL = ["--model", "resmlp_s12", "--img-size", "32", "--model-kwargs", "patch_size=8", "embed_dim=32", "depth=2"]
FAST = ["--workers", "0", "--warmup-epochs", "1", "--lr", "2e-3", "--weight-decay", "0.05", "--batch-size", "16",
        "--threads", "1"]


# a translation model small enough to train in seconds: fairseq-train flags (tests/test_mt_api.py...)
TINY_MT = [
    "--arch", "resmlp_mt_small", "--encoder-embed-dim", "32", "--encoder-layers", "1",
    "--decoder-layers", "1", "--decoder-attention-heads", "2", "--share-all-embeddings",
    "--max-source-positions", "64", "--max-target-positions", "64", "--optimizer", "adam", "--lr", "5e-3",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "1000",
    "--no-progress-bar", "--num-workers", "0", "--seed", "1", "--no-epoch-checkpoints",
]


def export_tiny_model(root: Path, updates: int = 30, model: Path | None = None) -> dict:
    """A corpus written here, prepared (``data-bin/multi30k.en-de``), a tiny model trained by
    ``fairseq-train`` for ``updates`` updates (``ckpt/``) and, when ``model`` is given, exported
    there by ``scripts/export_model.py``. Returns the paths: root, data, ckpt, model."""
    raw = write_corpus(root / "raw")
    prepared = prepare_multi30k(raw, root / "data-bin")
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    data = root / "data-bin" / "multi30k.en-de"
    ckpt = root / "ckpt"
    run([tool("fairseq-train"), data, "--user-dir", REPO / "resmlp_mt", *TINY_MT, "--save-dir", ckpt,
         "--max-update", str(updates)])
    if model is not None:
        run([sys.executable, "scripts/export_model.py", ckpt / "checkpoint_best.pt", data, model])
    return {"root": root, "data": data, "ckpt": ckpt, "model": model}


def link_images(src: Path, dest: Path, per_class: int, classes=None) -> Path:
    """An ImageFolder of symlinks to the first ``per_class`` images of each class of ``src``."""
    for cls in classes or sorted(os.listdir(src)):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(src / cls))[:per_class]:
            (dest / cls / name).symlink_to(src / cls / name)
    return dest


def make_slice(cifar10_dir: Path, dest: Path, train_per_class: int = 8, test_per_class: int = 4) -> Path:
    """A tiny CIFAR-10 (``train``/``test`` splits) of symlinks to the real images."""
    for split, k in (("train", train_per_class), ("test", test_per_class)):
        link_images(cifar10_dir / split, dest / split, k)
    return dest


# --- decoding: random models whose hypotheses end at different steps, fairseq as the reference ---


def eos_biased_model(seed: int, strength: float, model=None, **overrides):
    """A tiny random model whose end-of-sentence logit is raised by ``strength``, so that
    hypotheses end at different steps (a random model otherwise runs to the maximum length).
    Both generators compute logits through ``decoder.output_layer``."""
    model = tiny_model(seed, **overrides) if model is None else model
    output_layer = model.decoder.output_layer
    bias = torch.zeros(len(dictionary()))
    bias[dictionary().eos()] = strength
    model.decoder.output_layer = lambda features: output_layer(features) + bias
    return model


def eos_biased_folded(seed: int, strength: float, model=None):
    """:func:`eos_biased_model` folded (or ``model``, unbiased, folded): the folded output
    projection has a bias to raise."""
    from resmlp_mt.fast_generate import fold_for_inference

    folded = fold_for_inference(tiny_model(seed) if model is None else model)
    with torch.no_grad():
        folded.decoder.output_projection.bias[dictionary().eos()] += strength
    return folded


def source_batch(seed: int, batch: int = 6, length: int = 7, left_pad: bool = True):
    src = random_tokens(batch, length, torch.Generator().manual_seed(seed))
    src[:, -1] = dictionary().eos()
    for row, n in ((1, 3), (4, 2)):  # two shorter sentences
        if left_pad:
            src[row, :n] = dictionary().pad()
        else:
            src[row] = torch.cat([src[row, n:], src.new_full((n,), dictionary().pad())])
    return src


def fairseq_generate(model, src, beam, lenpen=1.0, max_len_a=0.0, max_len_b=200):
    from fairseq.sequence_generator import SequenceGenerator

    generator = SequenceGenerator([model], dictionary(), beam_size=beam, len_penalty=lenpen, max_len_a=max_len_a,
                                  max_len_b=max_len_b)
    return generator.generate([model], {"net_input": {"src_tokens": src,
                                                      "src_lengths": src.ne(dictionary().pad()).sum(1)}})


def assert_same(ours, theirs):
    for mine, ref in zip(ours, theirs):
        assert [h["tokens"].tolist() for h in mine] == [h["tokens"].tolist() for h in ref]
        torch.testing.assert_close(torch.stack([h["score"] for h in mine]), torch.stack([h["score"] for h in ref]))


def assert_translation_ignores_padding(model) -> None:
    """fairseq's beam search (beam 3) on ``model`` gives each of three sentences of different
    lengths the same hypothesis and score alone as in a batch, padded on either side."""
    import pytest
    from fairseq.sequence_generator import SequenceGenerator

    d = model.decoder.dictionary
    generator = SequenceGenerator([model], d, beam_size=3, max_len_a=0, max_len_b=8)
    g = torch.Generator().manual_seed(2)
    sentences = [with_eos(random_tokens(1, n, g), d.eos())[0] for n in (3, 8, 5)]

    def translate(batch):
        hypos = generator.generate([model], {"net_input": {"src_tokens": batch,
                                                           "src_lengths": batch.ne(d.pad()).sum(1)}})
        return [(h[0]["tokens"].tolist(), h[0]["score"].item()) for h in hypos]

    alone = [translate(s[None])[0] for s in sentences]
    for left in (True, False):
        for (tokens, score), (ref_tokens, ref_score) in zip(translate(pad_batch(sentences, d.pad(), left=left)), alone):
            assert tokens == ref_tokens
            assert score == pytest.approx(ref_score, abs=1e-5)


def assert_training_step_reaches_every_parameter(model) -> None:
    """One training step of ``model`` (train mode) on a padded batch: a finite loss and a finite,
    non-zero gradient for every parameter."""
    d = model.decoder.dictionary
    g = torch.Generator().manual_seed(3)
    src = pad_batch([with_eos(random_tokens(1, n, g), d.eos())[0] for n in (5, 9, 3)], d.pad(), left=True)
    tgt = pad_batch([with_eos(random_tokens(1, n, g), d.eos())[0] for n in (4, 7, 6)], d.pad(), left=False)
    prev = torch.roll(tgt, 1, dims=1)
    prev[:, 0] = d.eos()
    prev[tgt.eq(d.pad())] = d.pad()
    logits, _ = model(src, src.ne(d.pad()).sum(1), prev)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=d.pad())
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"
