"""Drills on translation checkpoints: crafted configuration strings never run code nor exhaust
memory, through every loader the project offers or plugs into; files holding pickled objects are
refused with a message naming them; torn or stale ``checkpoint_last.pt`` files never make a run
unrecoverable or lose updates; a finished run started again writes nothing; foreign files get
an error naming them.

Runs on a corpus the test writes (no shared data), with fairseq's own command-line tools.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

import resmlp_core.io
import resmlp_mt  # noqa: F401  (installs the guards, allows argparse.Namespace)
from resmlp_mt.fairseq_patches import checkpoints as checkpoint_safety
from conftest import REPO
from helpers import run, tool

USER_DIR = str(REPO / "resmlp_mt")
WORDS = [f"w{i}" for i in range(30)]
TRANSFORMER = [
    "--arch", "transformer", "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-attention-heads", "2",
    "--decoder-attention-heads", "2", "--share-all-embeddings",
]
TRAIN = [
    "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500", "--no-progress-bar",
    "--log-interval", "1", "--num-workers", "0", "--seed", "1", "--required-batch-size-multiple", "1",
    "--no-epoch-checkpoints",
]


def write_corpus(folder: Path, sizes=(("train", 200), ("valid", 10), ("test", 10))) -> None:
    """A toy task (the target is the source reversed), space-tokenized, in fairseq's raw layout."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        src = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(n)]
        (folder / f"{split}.en").write_text("\n".join(src) + "\n")
        (folder / f"{split}.de").write_text("\n".join(" ".join(reversed(s.split())) for s in src) + "\n")


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    """A fairseq ``transformer`` trained for 2 updates on a written corpus, and its data folder
    laid out as scripts/prepare_*.py lay it out (prep.json and raw references)."""
    root = tmp_path_factory.mktemp("drills_ckpt")
    write_corpus(root / "raw")
    data = root / "data"
    run([tool("fairseq-preprocess"), "--source-lang", "en", "--target-lang", "de",
         "--trainpref", root / "raw" / "train", "--validpref", root / "raw" / "valid",
         "--testpref", root / "raw" / "test", "--destdir", data, "--joined-dictionary", "--workers", "1"])
    (data / "ref").mkdir()
    for split in ("valid", "test"):
        for lang in ("en", "de"):
            (data / "ref" / f"{split}.{lang}").write_text((root / "raw" / f"{split}.{lang}").read_text())
    (data / "prep.json").write_text(json.dumps({"src_lang": "en", "tgt_lang": "de"}))
    ckpt = root / "ckpt"
    run([tool("fairseq-train"), data, "--user-dir", USER_DIR, *TRANSFORMER, *TRAIN, "--save-dir", ckpt,
         "--max-update", "2"])
    return {"root": root, "data": data, "ckpt": ckpt}


def crafted_checkpoint(source: Path, dest: Path, marker: Path) -> Path:
    """``source`` with ``adaptive_softmax_cutoff`` set to a string that, if evaluated, creates
    ``marker`` and still yields a valid cutoff list. The file holds no
    pickled code: torch's weights-only loading accepts it."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    state["cfg"]["model"].adaptive_softmax_cutoff = f"[__import__('os').system('touch {marker}') + 500]"
    torch.save(state, dest)
    torch.load(dest, map_location="cpu", weights_only=True)  # still "safe" for torch
    return dest


@pytest.fixture
def crafted(transformer_run, tmp_path):
    marker = tmp_path / "PWNED"
    path = crafted_checkpoint(transformer_run["ckpt"] / "checkpoint_best.pt", tmp_path / "crafted.pt", marker)
    return path, marker


def assert_refused(result, crafted_path, marker):
    out = result.stdout + result.stderr
    assert not marker.exists(), "the checkpoint's code ran"
    assert result.returncode != 0
    assert "adaptive_softmax_cutoff" in out and str(crafted_path) in out and "refusing to load" in out, out[-2000:]


@pytest.mark.slow
def test_crafted_checkpoint_runs_no_code_in_fairseq_generate(transformer_run, crafted):
    path, marker = crafted
    result = run([tool("fairseq-generate"), transformer_run["data"], "--user-dir", USER_DIR, "--path", path,
                  "--gen-subset", "test", "--beam", "2", "--batch-size", "4"], check=False)
    assert_refused(result, path, marker)


@pytest.mark.slow
def test_crafted_checkpoint_runs_no_code_in_fairseq_interactive(transformer_run, crafted):
    path, marker = crafted
    result = run([tool("fairseq-interactive"), transformer_run["data"], "--user-dir", USER_DIR, "--path", path,
                  "--source-lang", "en", "--target-lang", "de"], check=False, input="w1 w2\n")
    assert_refused(result, path, marker)


@pytest.mark.slow
def test_crafted_checkpoint_runs_no_code_in_the_evaluation_script(transformer_run, crafted):
    path, marker = crafted
    result = run([sys.executable, "scripts/evaluate_mt.py", transformer_run["data"], "--path", path], check=False)
    assert_refused(result, path, marker)


@pytest.mark.slow
def test_crafted_checkpoint_runs_no_code_when_training_resumes_or_finetunes(transformer_run, crafted, tmp_path):
    path, marker = crafted
    for flags in (["--restore-file", path], ["--finetune-from-model", path]):
        result = run([tool("fairseq-train"), transformer_run["data"], "--user-dir", USER_DIR, *TRANSFORMER, *TRAIN,
                      "--save-dir", tmp_path / "resume", "--max-update", "3", *flags], check=False)
        assert_refused(result, path, marker)


def test_crafted_checkpoint_runs_no_code_in_python_loaders(transformer_run, crafted):
    from fairseq import checkpoint_utils
    from fairseq.models.transformer import TransformerModel

    path, marker = crafted
    for load in (
        lambda: checkpoint_utils.load_model_ensemble_and_task([str(path)]),
        lambda: TransformerModel.from_pretrained(str(path.parent), checkpoint_file=path.name,
                                                 data_name_or_path=str(transformer_run["data"])),
    ):
        with pytest.raises(checkpoint_safety.UnsafeCheckpointError, match="adaptive_softmax_cutoff"):
            load()
        assert not marker.exists()


def test_direct_eval_sites_are_covered_too(tmp_path):
    """fconv and wav2vec call eval() on their options themselves, not through fairseq's helpers:
    the configuration check refuses the file before any model is built."""
    marker = tmp_path / "PWNED"
    args = argparse.Namespace(arch="fconv", task="translation",
                              encoder_layers=f"[(__import__('os').system('touch {marker}'), 3)]")
    path = tmp_path / "fconv.pt"
    torch.save({"args": args, "model": {}}, path)
    from fairseq import checkpoint_utils

    with pytest.raises(checkpoint_safety.UnsafeCheckpointError, match=r"args\.encoder_layers"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert not marker.exists()


def test_fairseq_eval_helpers_accept_literals_only(tmp_path):
    from fairseq import options, utils

    marker = tmp_path / "PWNED"
    payload = f"[__import__('os').system('touch {marker}') + 500]"
    for module in (utils, options):
        with pytest.raises(ValueError, match="not a Python literal"):
            module.eval_str_list(payload, type=int)
        with pytest.raises(ValueError, match="not a Python literal"):
            module.eval_str_dict(f"{{'a': {payload}}}")
        with pytest.raises(ValueError, match="not a Python literal"):
            module.eval_bool(payload)
    assert not marker.exists()
    # what fairseq's own options hold still parses
    assert utils.eval_str_list("[10000, 20000]", type=int) == [10000, 20000]
    assert utils.eval_str_list("[(512, 3)] * 2", type=tuple) == [(512, 3), (512, 3)]
    assert utils.eval_str_list("0.25") == [0.25]
    assert utils.eval_str_dict("{'beta': -0.5}") == {"beta": -0.5}
    assert utils.eval_bool("True") is True and utils.eval_bool(None, default=True) is True


def test_configuration_check_passes_real_checkpoints_and_names_every_bad_option(transformer_run):
    state = torch.load(transformer_run["ckpt"] / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    checkpoint_safety.check_checkpoint_config(state)  # a real checkpoint passes
    state["cfg"]["model"].encoder_layers_to_keep = "exec('x')"
    state["cfg"]["task"]["data"] = "(lambda: 0)"
    with pytest.raises(checkpoint_safety.UnsafeCheckpointError) as error:
        checkpoint_safety.check_checkpoint_config(state, source="ck.pt")
    message = str(error.value)
    assert "ck.pt" in message and "2 option(s)" in message
    assert "cfg.model.encoder_layers_to_keep" in message and "cfg.task.data" in message


def test_foreign_files_are_named_with_what_was_expected(tmp_path):
    from fairseq import checkpoint_utils

    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    vision_like = tmp_path / "vision.pth"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}, "epoch": 3}, vision_like)
    with pytest.raises(checkpoint_safety.NotAFairseqCheckpointError, match=f"{text}.*not a torch checkpoint"):
        checkpoint_utils.load_checkpoint_to_cpu(str(text))
    with pytest.raises(checkpoint_safety.NotAFairseqCheckpointError,
                       match=f"{vision_like}.*not a fairseq checkpoint.*epoch, model"):
        checkpoint_utils.load_checkpoint_to_cpu(str(vision_like))


def test_checkpoint_copies_are_atomic(tmp_path, monkeypatch):
    """A copy that dies half-way leaves the old checkpoint_last.pt whole and no temporary file."""
    from fairseq import checkpoint_utils

    src, dst = tmp_path / "checkpoint_3_30.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 100000)
    dst.write_bytes(b"old checkpoint")

    def dies_half_way(inp, out, length=0):
        out.write(inp.read(1000))
        raise KeyboardInterrupt  # as a kill would stop the copy

    monkeypatch.setattr(resmlp_core.io.shutil, "copyfileobj", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_3_30.pt", "checkpoint_last.pt"]
    monkeypatch.undo()
    assert checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mode == src.stat().st_mode


@pytest.mark.slow
def test_restart_after_a_torn_checkpoint_last_reaches_max_update(transformer_run, tmp_path):
    ckpt = tmp_path / "ckpt"
    common = [tool("fairseq-train"), transformer_run["data"], "--user-dir", USER_DIR, *TRANSFORMER, *TRAIN,
              "--save-dir", ckpt, "--save-interval-updates", "2"]
    run([*common, "--max-update", "4"])
    last = ckpt / "checkpoint_last.pt"
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 7])  # what a kill during fairseq's copy left behind
    result = run([*common, "--max-update", "6"])
    log = result.stdout + result.stderr
    assert re.search(rf"{re.escape(str(last))} was unreadable .*resuming from .*checkpoint_\d+_4\.pt", log), "\n".join(
        line for line in log.splitlines() if "heckpoint" in line or "unreadable" in line)
    assert "num_updates=5" in log.replace(" ", "")  # resumed at 4, not from scratch
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == 6
    kept = list(ckpt.glob("checkpoint_last.pt.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == whole[: len(whole) // 7]  # nothing deleted


@pytest.mark.slow
def test_evaluation_script_names_a_vision_checkpoint(transformer_run, tmp_path):
    vision_like = tmp_path / "best.pth"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}, "epoch": 3, "model_name": "resmlp_s12"}, vision_like)
    result = run([sys.executable, "scripts/evaluate_mt.py", transformer_run["data"], "--path", vision_like],
                 check=False)
    out = result.stdout + result.stderr
    assert (result.returncode == 2 and f"{vision_like}: not a fairseq checkpoint" in out
            and "KeyError" not in out), out[-2000:]



# --- restarts of fairseq-train ---------------------------------------------------------------

RESMLP = [
    "--arch", "resmlp_mt_small", "--encoder-embed-dim", "16", "--encoder-layers", "1", "--decoder-layers", "1",
    "--decoder-attention-heads", "2", "--share-all-embeddings", "--max-source-positions", "16",
    "--max-target-positions", "16",
]


def train_command(data, save_dir, *flags):
    return [tool("fairseq-train"), data, "--user-dir", USER_DIR, *RESMLP, *TRAIN, "--save-dir", save_dir, *flags]


def snapshot(folder: Path) -> dict:
    """Every file of ``folder``: name -> (sha256 of the bytes, mtime in ns)."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def saved_updates(path: Path) -> int:
    """The number of updates a fairseq checkpoint was saved at."""
    return torch.load(path, map_location="cpu", weights_only=True)["optimizer_history"][-1]["num_updates"]


def checkpoint_lines(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if re.search("heckpoint|finished|update", line))


@pytest.mark.slow
def test_starting_a_finished_run_again_writes_nothing(transformer_run, tmp_path):
    """A retry wrapper or a scheduler requeue runs the same command again once it has finished:
    fairseq would train one update past --max-update and overwrite checkpoint_last.pt and
    checkpoint_best.pt, once more at every retry."""
    ckpt = tmp_path / "ckpt"
    command = train_command(transformer_run["data"], ckpt, "--max-update", "3")
    run(command)
    before = snapshot(ckpt)
    assert {"checkpoint_last.pt", "checkpoint_best.pt"} <= set(before)
    for _ in range(2):
        result = run(command)  # exit status 0
        log = result.stdout + result.stderr
        assert snapshot(ckpt) == before, checkpoint_lines(log)
        finished = [line for line in log.splitlines() if "this run is already finished" in line]
        assert len(finished) == 1 and "3 updates done, --max-update 3" in finished[0], checkpoint_lines(log)
        assert str(ckpt / "checkpoint_last.pt") in finished[0] and "Saved checkpoint" not in log
    # a higher limit trains on from where the run stopped
    result = run(train_command(transformer_run["data"], ckpt, "--max-update", "4"))
    assert "num_updates=4" in (result.stdout + result.stderr).replace(" ", "")
    assert saved_updates(ckpt / "checkpoint_last.pt") == 4


@pytest.mark.slow
def test_starting_a_run_finished_by_max_epoch_again_writes_nothing(transformer_run, tmp_path):
    ckpt = tmp_path / "ckpt"
    command = train_command(transformer_run["data"], ckpt, "--max-epoch", "1")
    run(command)
    before = snapshot(ckpt)
    result = run(command)
    log = result.stdout + result.stderr
    assert snapshot(ckpt) == before
    assert re.search(r"this run is already finished \(1 epochs done, --max-epoch 1", log), checkpoint_lines(log)


@pytest.mark.slow
def test_restart_resumes_from_a_newer_numbered_checkpoint_than_checkpoint_last(transformer_run, tmp_path):
    """A kill between fairseq's save of a numbered checkpoint (checkpoint_E_U.pt) and its copy to
    checkpoint_last.pt leaves checkpoint_last.pt at the previous save: the restart resumes from
    the numbered one."""
    ckpt = tmp_path / "ckpt"
    command = train_command(transformer_run["data"], ckpt, "--save-interval-updates", "1")
    run([*command, "--max-update", "5"])
    numbered = sorted((saved_updates(p), p) for p in ckpt.glob("checkpoint_*_*.pt"))
    (before, previous), (newest_updates, newest) = numbered[-2:]
    assert newest_updates == 5
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):  # both as the previous save left them
        shutil.copy2(previous, ckpt / name)
    last = ckpt / "checkpoint_last.pt"
    result = run([*command, "--max-update", "7"])
    log = result.stdout + result.stderr
    older = rf"{re.escape(str(last))} \({before} updates\) is older than {re.escape(str(newest))} \(5 updates\)"
    assert re.search(older, log), checkpoint_lines(log)
    compact = log.replace(" ", "")
    assert "num_updates=6" in compact and f"num_updates={before + 1}" not in compact  # resumed at 5, not before
    assert saved_updates(last) == 7


def test_a_checkpoint_last_copied_back_on_purpose_is_kept(transformer_run, tmp_path):
    """Going back to an older checkpoint by copying it to checkpoint_last.pt (after a divergence)
    is not undone: the newer numbered checkpoint was written before the copy."""
    run_dir = tmp_path / "run"
    shutil.copytree(transformer_run["ckpt"], run_dir)
    newer = run_dir / "checkpoint_1_99.pt"
    state = torch.load(run_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    state["optimizer_history"][-1]["num_updates"] = 99
    torch.save(state, newer)
    last = run_dir / "checkpoint_last.pt"
    old = os.stat(newer).st_mtime_ns - 10**9
    os.utime(last, ns=(old, old))  # written before checkpoint_1_99.pt: a kill before the copy
    kept = last.read_bytes()
    os.utime(newer, ns=(old - 10**9, old - 10**9))  # checkpoint_last.pt copied back afterwards
    assert not checkpoint_safety.resume_from_newest_checkpoint(str(last))
    assert last.read_bytes() == kept
    os.utime(newer, ns=(old + 10**9, old + 10**9))  # and the other way round
    assert checkpoint_safety.resume_from_newest_checkpoint(str(last))
    assert last.read_bytes() == newer.read_bytes()


KILLED_COPY = """
import os, shutil, sys
import resmlp_mt
from fairseq import checkpoint_utils

def killed_half_way(inp, out, length=0):
    out.write(inp.read(1000))
    out.flush()
    os._exit(9)  # as SIGKILL would stop the copy: no clean-up runs

shutil.copyfileobj = killed_half_way
checkpoint_utils.PathManager.copy(sys.argv[1], sys.argv[2], overwrite=True)
"""


@pytest.mark.slow
def test_temporaries_of_killed_saves_are_removed_at_restart(transformer_run, tmp_path):
    ckpt = tmp_path / "ckpt"
    command = train_command(transformer_run["data"], ckpt, "--max-update", "2")
    run(command)
    killed = run([sys.executable, "-c", KILLED_COPY, ckpt / "checkpoint_best.pt", ckpt / "checkpoint_last.pt"],
                 check=False)
    assert killed.returncode == 9, killed.stderr[-2000:]
    (left,) = [p for p in ckpt.iterdir() if p.name.endswith(".tmp")]
    assert re.fullmatch(r"\.checkpoint_last\.pt\.\d+\.\w+\.tmp", left.name), left.name  # named by its writer's pid
    in_progress = ckpt / f".checkpoint_best.pt.{os.getpid()}.abc123.tmp"  # a live writer's: kept
    in_progress.write_bytes(b"partial")
    result = run(command)
    log = result.stdout + result.stderr
    assert not left.exists() and in_progress.exists(), sorted(p.name for p in ckpt.iterdir())
    removed = f"removed 1 temporary file(s) of killed checkpoint saves from {ckpt}: {left.name}"
    assert removed in log, checkpoint_lines(log)


# --- pickled objects ---------------------------------------------------------------------------


class PickledPayload:
    """Any class of the writer's: weights-only loading refuses to import it."""

    def __init__(self):
        self.command = "touch /tmp/never"


TORCH_ADVICE = ("weights_only", "add_safe_globals", "safe_globals", "trusted source", "can still be loaded")


def assert_refused_as_pickled(message: str, path: Path):
    assert str(path) in message and "holds pickled objects that safe (weights-only) loading refuses" in message, message
    assert re.search(r"it wanted the global \S*PickledPayload", message), message
    assert not any(advice in message for advice in TORCH_ADVICE), message


@pytest.fixture
def pickled_checkpoint(transformer_run, tmp_path):
    state = torch.load(transformer_run["ckpt"] / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    state["extra_state"]["note"] = PickledPayload()
    path = tmp_path / "pickled.pt"
    torch.save(state, path)
    return path


def test_pickled_objects_are_refused_naming_the_file_and_the_global(pickled_checkpoint, tmp_path):
    from fairseq import checkpoint_utils

    from vision import checkpoint as vision_checkpoint

    with pytest.raises(checkpoint_safety.UnsafeCheckpointError) as error:
        checkpoint_utils.load_model_ensemble_and_task([str(pickled_checkpoint)])
    assert_refused_as_pickled(str(error.value), pickled_checkpoint)
    assert error.value.__cause__ is None and error.value.__suppress_context__  # torch's message not chained
    from mt_tools.evaluate import EvaluationError, average_checkpoints  # evaluate_mt.py / export_model.py --average

    with pytest.raises(EvaluationError) as error:
        average_checkpoints([pickled_checkpoint, pickled_checkpoint], tmp_path / "averaged.pt")
    assert_refused_as_pickled(str(error.value), pickled_checkpoint)
    assert not (tmp_path / "averaged.pt").exists()
    vision_file = tmp_path / "vision.pth"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}, "args": PickledPayload()}, vision_file)
    with pytest.raises(ValueError) as error:
        vision_checkpoint.load(vision_file)
    assert_refused_as_pickled(str(error.value), vision_file)
    assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.slow
def test_pickled_objects_are_refused_by_fairseq_generate(transformer_run, pickled_checkpoint):
    result = run([tool("fairseq-generate"), transformer_run["data"], "--user-dir", USER_DIR,
                  "--path", pickled_checkpoint, "--gen-subset", "test", "--beam", "2", "--batch-size", "4"],
                 check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    (line,) = [line for line in out.splitlines() if "holds pickled objects" in line]
    assert_refused_as_pickled(line, pickled_checkpoint)
    assert not any(advice in out for advice in TORCH_ADVICE[1:]), out[-3000:]


# --- literals too large to evaluate -----------------------------------------------------------

COSTLY = ["9**9**9", "[0] * 10**12", "'a' * 10**10", "[0] * 1000000000000", "'a' * 10000000000", "(1,) * 10**9",
          "[[0] * 100000] * 100000", "[[[0] * 1000] * 1000] * 1000", "10**100 * 10**100", "2**64",
          "-" * 100000 + "1", "1+" * 100000 + "1", "[" * 60 + "]" * 60]  # fmt: skip


@pytest.mark.parametrize("text", COSTLY, ids=lambda t: t if len(t) < 40 else f"{t[:20]}...({len(t)} chars)")
def test_literals_too_large_to_evaluate_are_refused_quickly(text):
    from fairseq import utils

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^model\.cutoff: .* (too large|nested too deeply) to evaluate"):
        checkpoint_safety.literal_value(text, "model.cutoff")
    with pytest.raises(ValueError, match="list option"):
        utils.eval_str_list(text, type=int)
    assert time.perf_counter() - start < 1.0


def test_literals_of_real_configurations_still_parse():
    from fairseq import utils

    assert checkpoint_safety.literal_value("[(512, 3)] * 20") == [(512, 3)] * 20
    assert checkpoint_safety.literal_value("(0.9, 0.98)") == (0.9, 0.98)
    assert checkpoint_safety.literal_value("[4000, 8000]") == [4000, 8000]
    assert checkpoint_safety.literal_value("True") is True
    assert checkpoint_safety.literal_value("{'beta': -0.5, 'n': 2 ** 10}") == {"beta": -0.5, "n": 1024}
    assert checkpoint_safety.literal_value("[0] * 100000") == [0] * 100000  # the bound itself
    assert utils.eval_str_list("[(512, 3)] * 20", type=tuple) == [(512, 3)] * 20
    assert utils.eval_str_list("1e-3") == [1e-3]
    with pytest.raises(ValueError, match="not a literal"):
        checkpoint_safety.literal_value("'%0*d' % (10**9, 1)")  # %-formatting builds strings of any size


def test_checkpoints_with_literals_too_large_to_evaluate_are_refused_by_name(tmp_path):
    """fconv evaluates its options with eval() itself: the configuration check refuses them."""
    from fairseq import checkpoint_utils

    args = argparse.Namespace(arch="fconv", task="translation", encoder_layers="[(512, 3)] * 10**12",
                              decoder_layers="[(512, 3)] * 20", data="data-bin/x")
    path = tmp_path / "fconv.pt"
    torch.save({"args": args, "model": {}, "optimizer_history": []}, path)
    start = time.perf_counter()
    with pytest.raises(checkpoint_safety.UnsafeCheckpointError) as error:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    message = str(error.value)
    assert str(path) in message and "1 option(s) too large to evaluate: args.encoder_layers" in message, message
    assert "decoder_layers" not in message
    assert time.perf_counter() - start < 2.0
