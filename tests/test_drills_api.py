"""Drills on the Python API (``ResMLPTranslationModel.from_pretrained(folder).translate``): an
incomplete model folder is refused naming what is missing, a broken model card is skipped with
a warning, an int8 model decodes with every engine the docs name, and one model object serves
several threads at once, for every engine, with the translations of sequential calls.

A corpus written by the test, a tiny model trained by ``fairseq-train`` for a few updates."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import pytest

from helpers import export_tiny_model
from resmlp_mt import ResMLPTranslationModel

pytestmark = pytest.mark.slow

SENTENCES = [
    ["A man runs in the park.", "A girl sits."],
    ["Two dogs play with a ball near the water.", ""],
    ["A woman reads a book.", "The boy eats."],
    ["Three people walk down the street.", "A cat sleeps."],
]
ENGINES = ("fast", "onnx", "exact", "fairseq")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("drills_api")
    return export_tiny_model(root, updates=20, model=root / "model")["model"]


def copy_without(folder, tmp_path, *names):
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    for name in names:
        (copy / name).unlink()
    return copy


@pytest.mark.parametrize("missing", [("sentencepiece.bpe.model",), ("dict.de.txt",), ("dict.en.txt", "model.pt")])
def test_an_incomplete_model_folder_is_refused_naming_every_missing_file(model_folder, tmp_path, missing):
    copy = copy_without(model_folder, tmp_path, *missing)
    with pytest.raises(FileNotFoundError) as err:
        ResMLPTranslationModel.from_pretrained(copy)
    message = str(err.value)
    assert f"{copy} is not a complete model folder" in message
    assert all(name in message for name in missing)


def test_a_folder_without_sentencepiece_loads_when_asked_to(model_folder, tmp_path):
    copy = copy_without(model_folder, tmp_path, "sentencepiece.bpe.model")
    m = ResMLPTranslationModel.from_pretrained(copy, bpe=None)
    assert isinstance(m.translate("▁A ▁man", beam=2), str)  # pieces in, pieces out


@pytest.mark.parametrize("card", ["{not json", "[1, 2]", b"\xff\xfe"])
def test_a_broken_model_card_is_skipped_with_a_warning_naming_it(model_folder, tmp_path, caplog, card):
    copy = copy_without(model_folder, tmp_path)
    path = copy / "model_card.json"
    path.write_bytes(card if isinstance(card, bytes) else card.encode())
    with caplog.at_level(logging.WARNING, logger="resmlp_mt.hub"):
        m = ResMLPTranslationModel.from_pretrained(copy)
    assert m.card == {} and f"{path}: model card not read" in caplog.text
    assert (m.translate(SENTENCES[0], beam=2)
            == ResMLPTranslationModel.from_pretrained(model_folder).translate(SENTENCES[0], beam=2))


def test_an_int8_model_decodes_with_fast_onnx_and_exact_and_refuses_fairseq(model_folder):
    m = ResMLPTranslationModel.from_pretrained(model_folder).quantize()
    for engine in ("fast", "onnx", "exact"):
        out = m.translate(SENTENCES[1], beam=2, engine=engine)
        assert len(out) == 2 and out[1] == "", engine
    with pytest.raises(ValueError, match="not 'fairseq'"):
        m.translate(SENTENCES[1], engine="fairseq")


def in_threads(m, engine):
    """Each of 4 threads translates its own sentences with ``m`` at the same moment."""
    barrier = threading.Barrier(len(SENTENCES))
    results, errors = [None] * len(SENTENCES), []

    def work(i):
        try:
            barrier.wait()
            results[i] = m.translate(SENTENCES[i], beam=3, engine=engine)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(SENTENCES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("engine", ENGINES)
def test_four_threads_on_one_fresh_model_get_the_sequential_translations(model_folder, engine):
    sequential = ResMLPTranslationModel.from_pretrained(model_folder)
    expected = [sequential.translate(s, beam=3, engine=engine) for s in SENTENCES]
    fresh = ResMLPTranslationModel.from_pretrained(model_folder)  # its engine is built by the threads
    assert in_threads(fresh, engine) == expected
    assert in_threads(fresh, engine) == expected  # and once built


def test_the_model_card_of_an_exported_folder_is_read(model_folder):
    m = ResMLPTranslationModel.from_pretrained(model_folder)
    assert m.card == json.loads((model_folder / "model_card.json").read_text())
