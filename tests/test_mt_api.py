"""A model you can ship: ``scripts/export_model.py`` writes a self-contained folder,
``ResMLPTranslationModel.from_pretrained(folder).translate(...)`` translates from Python in a
fresh process, with the same output as fairseq's own command-line decoding.

A corpus written by the test, a tiny model trained by ``fairseq-train`` for a few updates."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

import resmlp_mt  # noqa: F401
from conftest import REPO
from benchmarks import plot_mt_mixing
from helpers import export_tiny_model, run, tool

pytestmark = pytest.mark.slow

USER_DIR = str(REPO / "resmlp_mt")
SENTENCES = ["A man runs in the park.", "Two dogs play with a ball near the water.", "", "A girl sits."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    exported = export_tiny_model(tmp_path_factory.mktemp("mt_api"))
    run([sys.executable, "scripts/evaluate_mt.py", exported["data"], "--path", exported["ckpt"] / "checkpoint_best.pt",
         "--split", "test", "--batch-size", "4", "--output", exported["ckpt"] / "eval_test.json"])
    out = exported["root"] / "model"
    result = run([sys.executable, "scripts/export_model.py", exported["ckpt"] / "checkpoint_best.pt", exported["data"],
                  out])
    assert "wrote" in result.stdout
    return dict(exported, model=out)


def test_export_writes_a_self_contained_folder(exported):
    model = exported["model"]
    assert sorted(p.name for p in model.iterdir()) == [
        "README.md", "dict.de.txt", "dict.en.txt", "model.pt", "model_card.json", "sentencepiece.bpe.model"]
    state = torch.load(model / "model.pt", map_location="cpu", weights_only=True)
    assert "last_optimizer_state" not in state and all("last_optimizer_state" not in h
                                                       for h in state["optimizer_history"])
    assert state["cfg"]["common"]["user_dir"] is None and state["cfg"]["task"]["data"] == "."
    original = torch.load(exported["ckpt"] / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    assert (model / "model.pt").stat().st_size < (exported["ckpt"] / "checkpoint_best.pt").stat().st_size / 2
    for key, value in original["model"].items():
        torch.testing.assert_close(state["model"][key], value.float(), rtol=0, atol=0)
    card = json.loads((model / "model_card.json").read_text())
    built = resmlp_mt.ResMLPTranslationModel.from_pretrained(str(model)).models[0]
    assert card["parameters"] == sum(p.numel() for p in built.parameters())
    assert (card["architecture"]["arch"] == "resmlp_mt_small"
            and card["updates"] == original["optimizer_history"][-1]["num_updates"])
    evaluation = json.loads((exported["ckpt"] / "eval_test.json").read_text())
    assert card["evaluation"]["results"]["test"]["sacrebleu"] == evaluation["results"]["test"]["sacrebleu"]
    readme = (model / "README.md").read_text()
    assert evaluation["results"]["test"]["sacrebleu_signature"] in readme and "from_pretrained" in readme


def test_translate_from_python_in_a_fresh_process_equals_fairseq_interactive(exported):
    code = (
        "import json, sys\n"
        "from resmlp_mt import ResMLPTranslationModel\n"
        "m = ResMLPTranslationModel.from_pretrained(sys.argv[1])\n"
        "sentences = json.loads(sys.argv[2])\n"
        "print(json.dumps({'list': m.translate(sentences, beam=4), 'one': m.translate(sentences[0], beam=4),\n"
        "                  'batched': m.translate(sentences * 5, beam=4, batch_size=3),\n"
        "                  'fairseq': m.translate(sentences, beam=4, engine='fairseq'),\n"
        "                  'exact': m.translate(sentences, beam=4, engine='exact'),\n"
        "                  'onnx': m.translate(sentences, beam=4, engine='onnx'),\n"
        "                  'int8': m.quantize().translate(sentences, beam=4),\n"
        "                  'onnx_int8': m.translate(sentences, beam=4, engine='onnx')}))\n"
    )
    result = run([sys.executable, "-c", code, exported["model"], json.dumps(SENTENCES)], cwd="/")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["list"][2] == "" and all(out["list"][i] for i in (0, 1, 3))
    assert out["one"] == out["list"][0] and out["batched"] == out["list"] * 5
    assert out["fairseq"] == out["list"] == out["exact"]  # the lean beam search finds fairseq's translations
    assert out["onnx"] == out["list"]  # the ONNX engine too (float32: equal up to rounding)
    for key in ("int8", "onnx_int8"):
        assert len(out[key]) == 4 and out[key][2] == "" and all(out[key][i] for i in (0, 1, 3)), key
    assert not any("▁" in text for text in out["list"])  # SentencePiece decoded
    fairseq_out = run([tool("fairseq-interactive"), exported["data"], "--user-dir", USER_DIR, "--path",
                       exported["ckpt"] / "checkpoint_best.pt", "--beam", "4", "--source-lang", "en", "--target-lang",
                       "de", "--bpe", "sentencepiece", "--sentencepiece-model", exported["data"] / "spm.model"],
                      input="\n".join(s for s in SENTENCES if s) + "\n")
    hyps = [line.split("\t")[2] for line in fairseq_out.stdout.splitlines() if line.startswith("D-")]
    assert hyps == [out["list"][i] for i in (0, 1, 3)]


def test_the_translators_pieces_are_fairseqs_dictionary_string(exported):
    """``Translator.string`` (the fast engines' path from tokens to text) joins what fairseq's
    ``Dictionary.string`` joins: special tokens, padding and unknowns included."""
    from resmlp_mt import ResMLPTranslationModel

    model = ResMLPTranslationModel.from_pretrained(str(exported["model"]))
    d = model.tgt_dict
    tokens = torch.tensor([d.bos(), 10, d.unk(), 11, d.pad(), d.eos(), 12, d.eos()])
    assert model.string(tokens) == d.string(tokens) == f"{d[10]} <unk> {d[11]} <pad> {d[12]}"
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        tokens = torch.randint(len(d), (int(torch.randint(0, 30, (1,), generator=generator)),), generator=generator)
        assert model.string(tokens) == d.string(tokens)
    assert model.string(tokens[None].repeat(2, 1)) == d.string(tokens[None].repeat(2, 1))  # fairseq's for 2-D


def test_a_vocabulary_map_restricts_the_onnx_engine(exported, tmp_path):
    """``use_vocabulary_map``: a map where every token is always a candidate translates as the
    whole vocabulary does; a learned one translates every line; other engines are refused while a
    map is set, and ``None`` lifts it."""
    from resmlp_mt import ResMLPTranslationModel
    from mt_tools.vocabulary_map import learn

    model = ResMLPTranslationModel.from_pretrained(str(exported["model"]))
    plain = model.translate(SENTENCES, engine="onnx")
    everything = tmp_path / "all.txt"
    everything.write_text("\t" + " ".join(model.tgt_dict.symbols) + "\n")
    assert model.use_vocabulary_map(everything).translate(SENTENCES, engine="onnx") == plain
    learned = learn(exported["data"], tmp_path / "vmap.txt", per_source=5, frequent=20)
    assert learned["always"] == 22
    out = model.use_vocabulary_map(tmp_path / "vmap.txt").translate(SENTENCES, engine="onnx")
    assert out[2] == "" and all(out[i] for i in (0, 1, 3))
    with pytest.raises(ValueError, match="restricts engine='onnx' only"):
        model.translate(SENTENCES)
    assert model.use_vocabulary_map(None).translate(SENTENCES) == plain


def test_export_averages_checkpoints(exported, tmp_path):
    first = exported["ckpt"] / "checkpoint_best.pt"
    state = torch.load(first, map_location="cpu", weights_only=True)
    shifted = {}  # every tensor + 1, the tied ones (one storage under several keys) still tied
    state["model"] = {k: shifted.setdefault(v.data_ptr(), v + 1) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    second = tmp_path / "checkpoint_shifted.pt"
    torch.save(state, second)
    out = tmp_path / "avg"
    run([sys.executable, "scripts/export_model.py", first, exported["data"], out, "--average", second])
    states = [torch.load(p, map_location="cpu", weights_only=True)["model"] for p in (first, second)]
    averaged = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["model"]
    key = "decoder.layers.0.channel_mlp.fc1.weight"
    torch.testing.assert_close(averaged[key], (states[0][key] + states[1][key]) / 2)
    torch.testing.assert_close(averaged[key], states[0][key] + 0.5)
    embeddings = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
    assert len({averaged[k].data_ptr() for k in embeddings}) == 1  # still tied, as in the trained file
    card = json.loads((out / "model_card.json").read_text())
    built = resmlp_mt.ResMLPTranslationModel.from_pretrained(str(out)).models[0]
    assert len(card["checkpoints"]) == 2 and card["parameters"] == sum(p.numel() for p in built.parameters())


def test_export_stores_a_tied_matrix_once_when_the_checkpoint_holds_copies_of_it(exported, tmp_path):
    """A checkpoint averaged key by key (fairseq's scripts/average_checkpoints.py) holds equal
    copies of the tied embeddings and output projection: the exported model.pt stores them once,
    as an export of the trained checkpoint does, and translates the same."""
    state = torch.load(exported["ckpt"] / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    state["model"] = {k: v.clone() for k, v in state["model"].items()}  # one storage per key
    copies = tmp_path / "checkpoint_copies.pt"
    torch.save(state, copies)
    out = tmp_path / "from_copies"
    run([sys.executable, "scripts/export_model.py", copies, exported["data"], out])
    model = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["model"]
    embeddings = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
    assert len({model[k].data_ptr() for k in embeddings}) == 1
    assert (out / "model.pt").stat().st_size == pytest.approx((exported["model"] / "model.pt").stat().st_size,
                                                              rel=0.01)
    translate = [resmlp_mt.ResMLPTranslationModel.from_pretrained(str(folder)).translate(SENTENCES)
                 for folder in (exported["model"], out)]
    assert translate[0] == translate[1]


def test_export_errors_name_the_problem_and_keep_what_exists(exported, tmp_path):
    result = run([sys.executable, "scripts/export_model.py", exported["ckpt"] / "checkpoint_best.pt", tmp_path,
                  tmp_path / "m"], check=False)
    assert result.returncode == 2 and f"{tmp_path}/prep.json not found" in result.stdout
    result = run([sys.executable, "scripts/export_model.py", exported["ckpt"] / "checkpoint_best.pt", exported["data"],
                  exported["model"]], check=False)
    assert result.returncode == 2 and "exists: pass --force" in result.stdout
    assert (exported["model"] / "model.pt").is_file()
    missing = run([sys.executable, "-c",
                   "from resmlp_mt import ResMLPTranslationModel as M; M.from_pretrained('/nonexistent')"],
                  check=False)
    assert missing.returncode != 0 and "/nonexistent is not a complete model folder: missing model.pt" in missing.stderr


def test_token_mixing_matrices_are_rendered(exported, tmp_path):
    out = tmp_path / "mixing.png"
    result = run([sys.executable, "-m", "benchmarks.plot_mt_mixing", exported["ckpt"] / "checkpoint_best.pt", out,
                  "--positions", "16"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in result.stdout
    module = plot_mt_mixing
    state = torch.load(exported["ckpt"] / "checkpoint_best.pt", map_location="cpu", weights_only=True)["model"]
    matrices = module.mixing_matrices(state, 16)
    assert len(matrices["encoder"]) == len(matrices["decoder"]) == 1
    title, decoder = matrices["decoder"][0]
    assert title == "decoder layer 0 (causal)"
    assert np.isnan(decoder[0, 1]) and not np.isnan(decoder[1, 0])  # the unused upper triangle is blank
    np.testing.assert_array_equal(matrices["encoder"][0][1],
                                  state["encoder.layers.0.token_mixer.weight"][:16, :16].numpy())
    vision_like = tmp_path / "vision.pth"
    torch.save({"model": {"blocks.0.linear_tokens.weight": torch.zeros(4, 4)}}, vision_like)
    bad = run([sys.executable, "-m", "benchmarks.plot_mt_mixing", vision_like, tmp_path / "x.png"], check=False)
    assert bad.returncode == 2 and "not a ResMLP translation model" in bad.stderr


def test_importing_the_plugin_leaves_the_programs_logging_alone():
    """fairseq 0.12 calls ``logging.basicConfig`` when its registries are imported (at DEBUG in
    wav2vec2_classification): a program that imports the plugin first (the Python API) keeps an
    unconfigured root logger, and no library's debug message reaches its stderr."""
    code = ("import logging, resmlp_mt\n"
            "root = logging.getLogger()\n"
            "print(root.level, len(root.handlers))\n"
            "logging.getLogger('some.library').debug('a library debug message')\n")
    result = run([sys.executable, "-c", code])
    assert result.stdout.split() == [str(logging.WARNING), "0"]
    assert "a library debug message" not in result.stderr and "tensorboardX" not in result.stderr
