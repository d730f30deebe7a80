"""The real command-line tools on a small corpus written by the test (helpers.write_corpus, with
Multi30k's file names), in a temp dir (as fairseq's tests/test_binaries.py): our preparation script,
fairseq-preprocess, fairseq-train with ``--user-dir resmlp_mt``, resuming, fairseq-generate, fairseq-interactive,
our evaluation script, and the error messages of bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resmlp_mt  # noqa: F401  (allows argparse.Namespace in torch's weights-only loading)
from conftest import REPO
from helpers import run, tool, write_corpus

pytestmark = pytest.mark.slow

USER_DIR = str(REPO / "resmlp_mt")
TINY_ARCH = [
    "--arch", "resmlp_mt_small", "--encoder-embed-dim", "32", "--encoder-layers", "1",
    "--decoder-layers", "1", "--decoder-attention-heads", "2", "--share-all-embeddings",
    "--max-source-positions", "128", "--max-target-positions", "128",
]
TRAIN_FLAGS = [
    "--user-dir", USER_DIR, *TINY_ARCH, "--optimizer", "adam", "--lr", "5e-3",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", "1000", "--no-progress-bar", "--log-interval", "1", "--num-workers", "0",
    "--seed", "1", "--no-epoch-checkpoints",
]


def slice_multi30k(src: Path, dest: Path, sizes):
    """The first lines of each file of a Multi30k-style folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, n in sizes.items():
        for lang in ("en", "de"):
            lines = (src / f"{name}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (dest / f"{name}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Prepared tiny data and a model trained for 12 updates (shared by the tests below). Every
    tenth sentence is long (30 to 45 words), for the length limits."""
    root = tmp_path_factory.mktemp("mt_cli")
    raw = write_corpus(root / "raw", sizes={"train": 240, "val": 24, "test_2016_flickr": 21}, long_every=10)
    result = run([sys.executable, "scripts/prepare_multi30k.py", "--raw-dir", raw, "--destdir-root",
                  root / "data-bin", "--vocab-size", "300", "--workers", "1"])
    assert "train: 240 pairs kept" in result.stdout
    data = root / "data-bin" / "multi30k.en-de"
    ckpt = root / "ckpt"
    train = run([tool("fairseq-train"), data, *TRAIN_FLAGS, "--save-dir", ckpt, "--max-update", "12"])
    return {"root": root, "raw": raw, "data": data, "ckpt": ckpt, "train_log": train.stdout + train.stderr}


def test_prepared_folder_holds_dictionary_spm_references_and_counts(workdir):
    data = workdir["data"]
    for name in ("dict.en.txt", "dict.de.txt", "spm.model", "train.en-de.en.bin", "valid.en-de.de.idx",
                 "test.en-de.en.bin", "ref/test.de", "ref/valid.en"):
        assert (data / name).exists(), name
    info = json.loads((data / "prep.json").read_text())
    assert info["splits"]["train"]["kept"] == 240 and info["splits"]["test"]["kept"] == 21
    # references are the original lines, in order
    raw_test = (workdir["raw"] / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    assert (data / "ref" / "test.de").read_text(encoding="utf-8").splitlines() == raw_test


def test_train_writes_checkpoints_that_load_with_weights_only(workdir):
    log = workdir["train_log"]
    assert "ResMLPTranslationModel" in log and "num_updates=12" in log.replace(" ", "")
    assert re.search(r"loss[ =]\d", log)
    last = workdir["ckpt"] / "checkpoint_last.pt"
    assert last.exists() and (workdir["ckpt"] / "checkpoint_best.pt").exists()
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert any(".token_mixer.weight" in k for k in state["model"])
    assert state["optimizer_history"][-1]["num_updates"] == 12
    # the plugin is what makes weights-only loading accept fairseq's checkpoints
    load = "import torch, sys; torch.load(sys.argv[1], map_location='cpu', weights_only=True)"
    bare = run([sys.executable, "-c", load, last], check=False)
    assert bare.returncode != 0 and "argparse.Namespace" in bare.stderr
    run([sys.executable, "-c", "import resmlp_mt; " + load, last])


def test_training_resumes_from_checkpoint_last(workdir, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint_last.pt").write_bytes((workdir["ckpt"] / "checkpoint_last.pt").read_bytes())
    result = run([tool("fairseq-train"), workdir["data"], *TRAIN_FLAGS, "--save-dir", ckpt, "--max-update", "16"])
    log = result.stdout + result.stderr
    assert re.search(r"[Ll]oaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 12 updates\)", log), log[-2000:]
    assert "num_updates=13" in log.replace(" ", "")  # continues counting, does not restart at 1
    assert "num_updates=1," not in log.replace(" ", "")
    state = torch.load(ckpt / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == 16


def test_generate_translates_every_test_sentence(workdir):
    result = run([tool("fairseq-generate"), workdir["data"], "--user-dir", USER_DIR, "--path",
                  workdir["ckpt"] / "checkpoint_best.pt", "--gen-subset", "test", "--beam", "4",
                  "--batch-size", "8", "--required-batch-size-multiple", "1", "--post-process", "sentencepiece"])
    ids = sorted(int(line.split("\t")[0][2:]) for line in result.stdout.splitlines() if line.startswith("H-"))
    assert ids == list(range(21))  # 21 is not a multiple of 8: nothing dropped


def test_evaluation_script_scores_with_sacrebleu_and_tokenized_bleu(workdir, tmp_path):
    out = tmp_path / "eval.json"
    result = run([sys.executable, "scripts/evaluate_mt.py", workdir["data"], "--checkpoint-dir", workdir["ckpt"],
                  "--split", "test", "valid", "--batch-size", "5", "--samples", "100", "--output", out])
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2." in result.stdout
    scores = json.loads(out.read_text())["results"]
    assert scores["test"]["sentences"] == 21 and scores["valid"]["sentences"] == 24
    import sacrebleu

    from mt_tools.evaluate import tokenized_bleu

    for split, raw in (("test", "test_2016_flickr"), ("valid", "val")):
        # every translation is printed (--samples 100), against the original lines in order:
        # the scores are those of these hypotheses
        samples = scores[split]["samples"]
        refs = [s["reference"] for s in samples]
        hyps = [s["hypothesis"] for s in samples]
        assert refs == (workdir["raw"] / f"{raw}.de").read_text(encoding="utf-8").splitlines()
        assert scores[split]["sacrebleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
        assert scores[split]["tok_bleu"] == round(tokenized_bleu(hyps, refs, "de", compound_split=False), 2)
        assert scores[split]["sentences_per_second"] > 0
    assert "HYP" in result.stdout


def test_checkpoint_averaging(workdir, tmp_path):
    ckpt = tmp_path / "ckpt"
    run([tool("fairseq-train"), workdir["data"], *TRAIN_FLAGS, "--save-dir", ckpt, "--max-update", "6",
         "--save-interval-updates", "2", "--keep-interval-updates", "3", "--max-tokens", "300"])  # > 6 updates an epoch
    from mt_tools.evaluate import average_checkpoints, last_checkpoints

    paths = last_checkpoints(ckpt, 2)
    assert [p.name for p in paths] == ["checkpoint_1_4.pt", "checkpoint_1_6.pt"]
    avg = average_checkpoints(paths, tmp_path / "avg.pt")
    states = [torch.load(p, map_location="cpu", weights_only=True)["model"] for p in paths]
    averaged = torch.load(avg, map_location="cpu", weights_only=True)["model"]
    key = "encoder.layers.0.channel_mlp.fc1.weight"
    torch.testing.assert_close(averaged[key], (states[0][key] + states[1][key]) / 2)
    assert not torch.equal(states[0][key], states[1][key])


def test_interactive_translates_raw_text_with_sentencepiece(workdir):
    result = run([tool("fairseq-interactive"), workdir["data"], "--user-dir", USER_DIR, "--path",
                  workdir["ckpt"] / "checkpoint_best.pt", "--beam", "4", "--source-lang", "en",
                  "--target-lang", "de", "--bpe", "sentencepiece", "--sentencepiece-model",
                  workdir["data"] / "spm.model"],
                 input="A man is walking a dog.\nTwo children play in the park.\n")
    hyps = [line for line in result.stdout.splitlines() if line.startswith("D-")]
    assert [h.split("\t")[0] for h in hyps] == ["D-0", "D-1"]
    assert "▁" not in hyps[0], "pieces are decoded back to text"


def test_too_long_sentences_are_skipped_with_a_count_at_training(workdir, tmp_path):
    flags = [a if a != "128" else "40" for a in TRAIN_FLAGS]
    result = run([tool("fairseq-train"), workdir["data"], *flags, "--save-dir", tmp_path, "--max-update", "1",
                  "--skip-invalid-size-inputs-valid-test"])
    log = result.stdout + result.stderr
    match = re.search(r"(\d+) samples have invalid sizes and will be skipped, max_positions=\(40, 40\)", log)
    assert match and int(match.group(1)) > 0, log[-2000:]


def test_too_long_sentence_at_generation_is_a_clear_error(workdir, tmp_path):
    result = run([tool("fairseq-generate"), workdir["data"], "--user-dir", USER_DIR, "--path",
                  workdir["ckpt"] / "checkpoint_best.pt", "--gen-subset", "test", "--batch-size", "8",
                  "--max-source-positions", "8"], check=False)
    assert result.returncode != 0
    assert "skip this example with --skip-invalid-size-inputs-valid-test" in result.stderr


def test_checkpoint_of_another_shape_is_refused_with_the_differences(workdir, tmp_path):
    flags = [a if a != "128" else "32" for a in TRAIN_FLAGS]
    result = run([tool("fairseq-train"), workdir["data"], *flags, "--save-dir", tmp_path, "--max-update", "1",
                  "--restore-file", workdir["ckpt"] / "checkpoint_last.pt", "--skip-invalid-size-inputs-valid-test"],
                 check=False)
    assert result.returncode != 0
    assert "decoder.layers.0.token_mixer.bias: (128,) in the checkpoint, (32,) in the model" in result.stderr
    assert "--max-source-positions/--max-target-positions" in result.stderr


def test_unknown_arch_is_named(workdir, tmp_path):
    result = run([tool("fairseq-train"), workdir["data"], "--user-dir", USER_DIR, "--arch", "resmlp_mt_tiny",
                  "--save-dir", tmp_path], check=False)
    assert result.returncode != 0
    assert "invalid choice: 'resmlp_mt_tiny'" in result.stderr and "resmlp_mt_small" in result.stderr


# --- bad corpora: the preparation script --------------------------------------------------------


def test_misaligned_corpus_names_both_files_and_counts_and_keeps_existing_output(workdir, tmp_path):
    raw = slice_multi30k(workdir["raw"], tmp_path / "raw", {"train": 50, "val": 5, "test_2016_flickr": 5})
    dest_root = tmp_path / "data-bin"
    run([sys.executable, "scripts/prepare_multi30k.py", "--raw-dir", raw, "--destdir-root", dest_root,
         "--vocab-size", "200", "--workers", "1"])
    before = {p.name: p.read_bytes() for p in (dest_root / "multi30k.en-de").iterdir() if p.is_file()}
    with open(raw / "train.de", "a", encoding="utf-8") as f:
        f.write("Eine zusätzliche Zeile.\n")
    result = run([sys.executable, "scripts/prepare_multi30k.py", "--raw-dir", raw, "--destdir-root", dest_root,
                  "--vocab-size", "200", "--workers", "1", "--force"], check=False)
    assert result.returncode == 2
    assert f"{raw / 'train.en'} has 50 lines but {raw / 'train.de'} has 51" in result.stdout
    after = {p.name: p.read_bytes() for p in (dest_root / "multi30k.en-de").iterdir() if p.is_file()}
    assert after == before, "the existing prepared data is untouched"
    assert [p.name for p in dest_root.iterdir()] == ["multi30k.en-de"], "no temporary folder left behind"


def test_missing_corpus_file_is_named(tmp_path, workdir):
    raw = slice_multi30k(workdir["raw"], tmp_path / "raw", {"train": 20, "val": 5, "test_2016_flickr": 5})
    (raw / "val.de").unlink()
    result = run([sys.executable, "scripts/prepare_multi30k.py", "--raw-dir", raw, "--destdir-root",
                  tmp_path / "out", "--workers", "1"], check=False)
    assert result.returncode == 2
    assert f"valid: corpus file not found: {raw / 'val.de'}" in result.stdout


def test_empty_lines_are_dropped_and_counted(tmp_path, workdir):
    raw = slice_multi30k(workdir["raw"], tmp_path / "raw", {"train": 60, "val": 6, "test_2016_flickr": 6})
    lines = (raw / "train.de").read_text(encoding="utf-8").splitlines()
    lines[3] = ""
    lines[10] = "   "
    (raw / "train.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run([sys.executable, "scripts/prepare_multi30k.py", "--raw-dir", raw, "--destdir-root",
                  tmp_path / "out", "--vocab-size", "200", "--workers", "1"])
    assert "train: dropped 2 sentence pairs with an empty side" in result.stdout
    assert "first at line 4, line 11" in result.stdout
    info = json.loads((tmp_path / "out" / "multi30k.en-de" / "prep.json").read_text())
    assert info["splits"]["train"]["kept"] == 58 and info["splits"]["train"]["dropped_empty"] == 2


def test_distributed_training_with_two_cpu_processes_over_gloo(workdir, tmp_path):
    """fairseq's own torch.distributed path (distributed_init, LegacyDistributedDataParallel's
    all-reduce) with 2 processes on the CPU. fairseq spawns one process per GPU and its
    torchrun path divides by the GPU count, so the two ranks are started here as a cluster
    scheduler would start them: same --distributed-init-method, one --distributed-rank each."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    batch = ["--batch-size", "8"]  # 8 sentences per rank and update, whatever their lengths
    common = [tool("fairseq-train"), workdir["data"], *TRAIN_FLAGS, *batch, "--save-dir", tmp_path, "--max-update", "4",
              "--cpu", "--distributed-world-size", "2", "--distributed-init-method", f"tcp://127.0.0.1:{port}",
              "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([*common, "--distributed-rank", str(rank)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env) for rank in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "distributed init (rank 0)" in logs[0] and "distributed init (rank 1)" in logs[1]
    assert "training on 2 devices" in logs[0]
    # the effective batch is the sum of both ranks' batches: compare with one process
    single = run([tool("fairseq-train"), workdir["data"], *TRAIN_FLAGS, *batch, "--save-dir", tmp_path / "single",
                  "--max-update", "4"])
    bsz = lambda log: [float(m) for m in re.findall(r"bsz=([\d.]+)", log.replace(" ", ""))]  # noqa: E731
    assert bsz(logs[0]) and bsz(single.stdout + single.stderr)
    assert bsz(logs[0])[0] > 1.5 * bsz(single.stdout + single.stderr)[0]
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == 4
