"""Drill: a training whose update diverges. fairseq reruns the update inside its NaN detector to log
the first module with a NaN or Inf, then stops with ``FloatingPointError``; without the plugin's
patch (resmlp_mt/fairseq_patches/nan_detector.py) the detector's backward hook on the encoder,
whose output is a dict of lists, crashed that rerun with ``StopIteration`` inside torch."""

from __future__ import annotations

import logging

import pytest
import torch

from helpers import random_tokens, prev_output, run, tool, tiny_model, with_eos, write_corpus, prepare_multi30k, TINY_MT


def forward_backward(model) -> None:
    eos = model.decoder.dictionary.eos()
    logits, _ = model(with_eos(random_tokens(2, 6), eos), None, prev_output(random_tokens(2, 5), eos))
    logits.float().sum().backward()


def test_the_nan_report_names_the_first_module_instead_of_crashing(caplog, monkeypatch):
    from fairseq.nan_detector import NanDetector

    model = tiny_model(0).train()
    with torch.no_grad():
        model.encoder.layers[1].channel_mlp.fc1.weight[0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="fairseq.nan_detector"):
        with NanDetector(model):
            forward_backward(model)
    assert "NaN detected in output of encoder.layers.1.channel_mlp.fc1, shape" in caplog.text
    # fairseq's own hooks: the encoder's backward hook stops the rerun (the hazard is real)
    monkeypatch.setattr(NanDetector, "add_hooks", NanDetector.add_hooks.__wrapped__)
    model.zero_grad()
    with pytest.raises(StopIteration), NanDetector(model):
        forward_backward(model)


@pytest.mark.slow
def test_a_diverged_training_ends_with_fairseqs_error_and_its_report(tmp_path):
    """fairseq-train at a learning rate that makes the first updates overflow: the log ends with
    ``FloatingPointError`` after the detector's report, and ``crash.pt`` is saved for inspection."""
    raw = write_corpus(tmp_path / "raw", sizes={"train": 200, "val": 8, "test_2016_flickr": 8})
    assert prepare_multi30k(raw, tmp_path / "data-bin").returncode == 0
    flags = [*TINY_MT, "--lr", "1e6", "--max-update", "20", "--log-interval", "1", "--user-dir", "resmlp_mt",
             "--save-dir", tmp_path / "ckpt"]
    train = run([tool("fairseq-train"), tmp_path / "data-bin" / "multi30k.en-de", *flags], check=False)
    log = train.stdout + train.stderr
    assert train.returncode != 0 and "StopIteration" not in log, log[-3000:]
    assert log.rstrip().endswith("FloatingPointError: gradients are Nan/Inf"), log[-3000:]
    assert "detected in output of" in log and (tmp_path / "ckpt" / "crash.pt").is_file()
