"""Sequence-level distillation data (mt_tools/distill.py): a tiny Transformer teacher trained here
translates the training sources; the distilled folder has its hypotheses as training targets,
the original dictionaries, SentencePiece model, valid and test splits and references; a killed
run resumes at its first missing chunk; a student trains on the folder with fairseq-train."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import REPO
from helpers import TINY_MT, prepare_multi30k, run, tool, write_corpus
from mt_tools import distill as distill_module
from mt_tools.distill import DistillationError, distill

TEACHER = ["--arch", "transformer", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
           "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-attention-heads", "2",
           "--decoder-attention-heads", "2",
           "--share-all-embeddings", "--optimizer", "adam", "--lr", "5e-3", "--max-tokens", "1000",
           "--no-progress-bar", "--num-workers", "0", "--seed", "1", "--no-epoch-checkpoints"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    raw = write_corpus(root / "raw", sizes={"train": 60, "val": 8, "test_2016_flickr": 6})
    assert prepare_multi30k(raw, root / "data-bin").returncode == 0
    data = root / "data-bin" / "multi30k.en-de"
    run([tool("fairseq-train"), data, "--user-dir", REPO / "resmlp_mt", *TEACHER, "--save-dir", root / "teacher",
         "--max-update", "20"])
    return {"root": root, "data": data, "ckpt": root / "teacher" / "checkpoint_last.pt"}


def read_pieces(folder, split, lang):
    """The lines of a binarized split, as pieces (fairseq's own dataset reader)."""
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(folder / f"dict.{lang}.txt"))
    dataset = data_utils.load_indexed_dataset(str(folder / f"{split}.en-de.{lang}"), d)
    return [d.string(dataset[i]) for i in range(len(dataset))]


@pytest.mark.slow
def test_distilled_folder_has_the_teachers_translations_and_the_original_evaluation_splits(teacher, tmp_path):
    out = tmp_path / "multi30k.en-de.distilled"
    entry = distill(teacher["ckpt"], teacher["data"], out, beam=2, chunk=16, progress=False)
    assert entry["sentences"] == 60 and entry["beam"] == 2 and entry["max_length_ratio"] == 2.0
    assert entry["pairs"] + entry["left_out_empty"] + entry["left_out_runaway"] == 60
    info = json.loads((out / "prep.json").read_text())
    assert info["distillation"] == entry and info["src_lang"] == "en"
    for name in ("dict.en.txt", "dict.de.txt", "spm.model", "valid.en-de.en.bin", "test.en-de.de.idx", "ref/test.de"):
        assert filecmp.cmp(teacher["data"] / name, out / name, shallow=False), name
    sources, targets = read_pieces(out, "train", "en"), read_pieces(out, "train", "de")
    assert len(sources) == len(targets) == entry["pairs"] > 0
    assert set(sources) <= set(read_pieces(teacher["data"], "train", "en"))  # the same sources...
    assert targets != read_pieces(teacher["data"], "train", "de")[: len(targets)]  # ...with the teacher's targets
    assert not (tmp_path / "multi30k.en-de.distilled.work").exists()
    # a student trains on it with fairseq-train
    run([tool("fairseq-train"), out, "--user-dir", REPO / "resmlp_mt", *TINY_MT,
         "--arch", "resmlp_mt_small_deep_shallow", "--save-dir", tmp_path / "student", "--max-update", "3"])
    assert (tmp_path / "student" / "checkpoint_last.pt").is_file()


@pytest.mark.slow
def test_a_killed_distillation_resumes_at_its_first_missing_chunk(teacher, tmp_path, monkeypatch):
    out = tmp_path / "distilled"
    translate, calls = distill_module.translate_chunk, []

    def dies_at_third_chunk(models, task, indices, beam, max_tokens):
        calls.append(indices[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill between two chunks
        return translate(models, task, indices, beam, max_tokens)

    monkeypatch.setattr(distill_module, "translate_chunk", dies_at_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher["ckpt"], teacher["data"], out, beam=2, chunk=16, progress=False)
    chunks = sorted(p.name for p in (tmp_path / "distilled.work").glob("chunk_*"))
    assert not out.exists() and chunks == ["chunk_0.tsv", "chunk_1.tsv"]
    calls.clear()
    monkeypatch.setattr(distill_module, "translate_chunk", translate)
    reference = distill(teacher["ckpt"], teacher["data"], tmp_path / "reference", beam=2, chunk=16, progress=False)
    monkeypatch.setattr(distill_module, "translate_chunk", lambda *a: calls.append(a[2][0]) or translate(*a))
    resumed = distill(teacher["ckpt"], teacher["data"], out, beam=2, chunk=16, progress=False)
    assert calls == [32, 48]  # chunks 2 and 3 only
    def untimed(record):
        return {k: v for k, v in record.items() if "seconds" not in k}

    assert untimed(resumed) == untimed(reference)
    assert read_pieces(out, "train", "de") == read_pieces(tmp_path / "reference", "train", "de")


def test_a_runaway_translation_leaves_its_pair_out(teacher, tmp_path, monkeypatch):
    """A translation longer than --max-length-ratio times its source plus 5 pieces (a beam search
    repeating itself to the length limit) is left out and counted; with a ratio of 0 it is kept."""
    from mt_tools.distill import runaway

    assert runaway("a b c", " ".join(["x"] * 12), 2.0) and not runaway("a b c", " ".join(["x"] * 11), 2.0)
    assert not runaway("a", " ".join(["x"] * 500), 0)
    translate, repeated = distill_module.translate_chunk, []

    def one_runs_away(models, task, indices, beam, max_tokens):
        """Every translation a copy of its source (this tiny teacher's own can run away), but the first
        pair's: its source's first piece 100 times."""
        lines = [line.split("\t") for line in translate(models, task, indices, beam, max_tokens)]
        if indices[0] == 0:
            repeated[:] = [" ".join([lines[0][1].split()[0]] * 100)]
        return ["\t".join([sid, source, repeated[0] if sid == "0" else source]) for sid, source, _ in lines]

    monkeypatch.setattr(distill_module, "translate_chunk", one_runs_away)
    entries = {ratio: distill(teacher["ckpt"], teacher["data"], tmp_path / f"ratio{ratio}", beam=1, chunk=60,
                              progress=False, max_length_ratio=ratio) for ratio in (2.0, 0)}
    assert entries[2.0]["left_out_runaway"] == 1 and entries[0]["left_out_runaway"] == 0
    assert entries[2.0]["pairs"] == entries[0]["pairs"] - 1 == 59
    assert repeated[0] not in read_pieces(tmp_path / "ratio2.0", "train", "de")  # (a joined dictionary)
    assert repeated[0] in read_pieces(tmp_path / "ratio0", "train", "de")
    refused = run([sys.executable, "-m", "mt_tools.distill", "--teacher", teacher["ckpt"], "--data", teacher["data"],
                   "--max-length-ratio", "-1"], check=False)
    assert refused.returncode == 2 and "--max-length-ratio -1: a ratio of at least 0" in refused.stderr
    # every translation left out: an error that says why, and nothing written
    monkeypatch.setattr(distill_module, "translate_chunk", lambda models, task, indices, *a: [
        f"{i}\tw x\t{' '.join(['y'] * 20)}" for i in indices])
    with pytest.raises(DistillationError, match="no training pair left: 0 empty translations, 60 longer than 2 x"):
        distill(teacher["ckpt"], teacher["data"], tmp_path / "none", beam=1, chunk=60, progress=False)
    assert not (tmp_path / "none").exists()


def test_bad_input_names_the_flag(tmp_path):
    with pytest.raises(DistillationError, match="--data .*not a prepared folder"):
        distill(tmp_path / "teacher.pt", tmp_path / "nothing", tmp_path / "out")
    result = run([sys.executable, "-m", "mt_tools.distill", "--teacher", tmp_path / "missing.pt", "--data", tmp_path],
                 check=False)
    assert result.returncode == 2 and "error: --data" in result.stderr
    nothing = run([sys.executable, "-m", "benchmarks.mt_distill", "--stage", "students", "--students"], check=False)
    assert nothing.returncode == 2 and "--students names no student and --variant-flags is empty" in nothing.stderr
    unpaired = run([sys.executable, "-m", "benchmarks.mt_distill", "--stage", "report", "--variant-flags=--arch a",
                    "--variant-flags=--arch b"], check=False)
    assert unpaired.returncode == 2 and "one --variant-name per --variant-flags (0 names, 2 flags)" in unpaired.stderr


def test_a_teacher_checkpoint_is_one_file_of_one_pair_and_the_only_teacher(tmp_path, capsys):
    """--teacher-checkpoint names a file, serves one pair and excludes the other ways of choosing a
    teacher; --stage names stages or says all."""
    from benchmarks.mt_distill import main

    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"")
    for flags, message in (
            (["--teacher-checkpoint", tmp_path / "missing.pt"], "--teacher-checkpoint .*missing.pt: no such file"),
            (["--teacher-checkpoint", checkpoint, "--teacher-run", tmp_path],
             "--teacher-run choose another teacher: give one of them"),
            (["--teacher-checkpoint", checkpoint, "--teacher-dropout", "0.2"], "--teacher-dropout choose another"),
            (["--teacher-checkpoint", checkpoint, "--pairs", "en-de", "en-fr"], "serves one pair, --pairs gives 2"),
            (["--stage", "all", "report"], "--stage all runs every stage: give it alone")):
        with pytest.raises(SystemExit) as exit_:
            main([*map(str, flags)])
        assert exit_.value.code == 2
        assert re.search(message, capsys.readouterr().err), message


@pytest.mark.slow
def test_a_teacher_checkpoint_is_scored_and_distilled_without_training(teacher, tmp_path):
    """Any fairseq checkpoint of the pair is a teacher (--teacher-checkpoint): nothing trains for
    it, it is scored once for the report's teacher row; the stages named run in the study's order,
    whatever the order given. (Its students train as the study's own teacher's do: the test above.)"""
    from benchmarks.common import repo_relative

    checkpoint = tmp_path / "teacher.pt"
    shutil.copy(teacher["ckpt"], checkpoint)
    command = [sys.executable, "-m", "benchmarks.mt_distill", "--teacher-checkpoint", checkpoint, "--pairs", "en-de",
               "--data-root", teacher["data"].parent, "--work-dir", tmp_path / "work",
               "--results-dir", tmp_path / "results", "--progress-seconds", "0", "--no-progress-bar",
               "--students", "resmlp_mt_small"]
    result = run([*command, "--stage", "report", "distill", "teacher"])
    stages = [result.stdout.index(f"=== stage {stage} ===") for stage in ("teacher", "distill", "report")]
    assert stages == sorted(stages)
    assert "nothing to train; scoring it on valid and test" in result.stdout
    assert "translating the training sources" in result.stdout
    prep = json.loads((tmp_path / "work" / "distilled" / "multi30k.en-de" / "prep.json").read_text())
    assert prep["distillation"]["teacher_mtime_ns"] == checkpoint.stat().st_mtime_ns

    out = json.loads((tmp_path / "results" / "mt_distill.json").read_text())
    assert out["settings"]["teacher_checkpoint"] == repo_relative(str(checkpoint))
    (teacher_row,) = out["pairs"]["en-de"]["rows"]  # no student trained yet
    assert (teacher_row["model"], teacher_row["reported"], teacher_row["updates"]) == ("teacher (Transformer)",
                                                                                      "checkpoint", 20)
    assert teacher_row["train_minutes"] is None and teacher_row["converged"] is None and teacher_row["parameters"] > 0
    assert 0 <= teacher_row["test"] <= 100 and 0 <= teacher_row["valid"] <= 100
    text = (tmp_path / "results" / "mt_distill.md").read_text()
    assert f"the teacher the checkpoint `{repo_relative(str(checkpoint))}`, not trained here" in text
    assert "| teacher (Transformer) | references |" in text and " | 20 | - | - |" in text
    again = run([*command, "--stage", "teacher"])  # scored once per checkpoint file
    assert "scored before" in again.stdout and "scoring it" not in again.stdout


def test_a_distilled_students_run_counts_only_for_the_teacher_file_that_made_its_targets(tmp_path):
    """The distilled folder's path stays when its teacher changes (another checkpoint, a teacher
    trained further): the student's settings name the teacher file, so its cached run no longer
    matches; a student on the references does not depend on it."""
    import argparse

    from benchmarks.mt_distill import DistillStudy

    args = argparse.Namespace(work_dir=tmp_path, results_dir=tmp_path, data_root=tmp_path, eval_every=250,
                              max_minutes=95.0, students=["resmlp_mt_small"], variants={}, extra_train_args="",
                              threads=1, teacher_checkpoint=None)
    study = DistillStudy(args)
    distilled, references = study.student_jobs("en-de")
    prep = study.distilled("en-de") / "prep.json"
    prep.parent.mkdir(parents=True)
    specs = []
    for mtime in (1, 2):
        prep.write_text(json.dumps({"distillation": {"teacher": "t.pt", "teacher_mtime_ns": mtime, "beam": 4}}))
        specs.append((study.spec(distilled), study.spec(references)))
    assert specs[0][0]["distilled_by"] == {"teacher": "t.pt", "teacher_mtime_ns": 1}
    assert specs[0][0] != specs[1][0] and specs[0][1] == specs[1][1] and "distilled_by" not in specs[0][1]
    # the same teacher's targets with the runaway translations left out: another run (a folder from
    # before the filter, without the setting, keeps its runs)
    prep.write_text(json.dumps({"distillation": {"teacher": "t.pt", "teacher_mtime_ns": 2, "max_length_ratio": 2.0}}))
    assert study.spec(distilled)["distilled_by"] == {"teacher": "t.pt", "teacher_mtime_ns": 2, "max_length_ratio": 2.0}
    assert study.spec(distilled) != specs[1][0] and study.spec(references) == specs[1][1]


def test_the_distill_stage_translates_again_for_another_teacher_or_filter(tmp_path, monkeypatch):
    """The distilled folder is reused only when its teacher file and its length filter are the study's."""
    import argparse

    from benchmarks import mt_distill
    from benchmarks.mt_distill import DistillStudy

    teacher = tmp_path / "t.pt"
    teacher.write_bytes(b"")
    args = argparse.Namespace(work_dir=tmp_path, results_dir=tmp_path, data_root=tmp_path, pairs=["en-de"],
                              progress_bar=False, teacher_checkpoint=None)
    study = DistillStudy(args)
    monkeypatch.setattr(study, "teacher_checkpoint", lambda pair: teacher)
    calls = []
    monkeypatch.setattr(mt_distill, "distill", lambda *a, **k: calls.append(a[0]))
    prep = study.distilled("en-de") / "prep.json"
    prep.parent.mkdir(parents=True)
    mtime = teacher.stat().st_mtime_ns
    for made, translates in (({"teacher_mtime_ns": mtime}, True),  # from before the filter
                             ({"teacher_mtime_ns": mtime, "max_length_ratio": 2.0}, False),
                             ({"teacher_mtime_ns": mtime + 1, "max_length_ratio": 2.0}, True)):
        prep.write_text(json.dumps({"distillation": made}))
        calls.clear()
        study.distill()
        assert calls == ([teacher] if translates else []), made


def test_a_teacher_trained_with_other_settings_is_named_with_the_settings_that_differ(tmp_path):
    """A later stage run without the flags the teacher was trained with (its budget) does not find
    it as trained: the error names the run and the settings that differ, not "not trained yet"."""
    import argparse

    from benchmarks.mt_distill import DistillStudy

    def study(teacher_minutes):
        return DistillStudy(argparse.Namespace(
            work_dir=tmp_path, results_dir=tmp_path, data_root=tmp_path, eval_every=250, max_minutes=95.0,
            teacher_max_minutes=teacher_minutes, teacher_dropout=0.2, teacher_run=None, teacher_checkpoint=None,
            extra_train_args="", threads=1))

    trained = study(150.0)
    job = trained.teacher_job("en-de")
    with pytest.raises(SystemExit, match="the en-de teacher is not trained yet"):
        trained.teacher_checkpoint("en-de")
    trained.run_dir(job).mkdir(parents=True)
    result = {"spec": trained.spec(job), "eval": {"averaged": {}}, "converged": True}
    (trained.run_dir(job) / "result.json").write_text(json.dumps(result))
    assert trained.teacher_checkpoint("en-de").name == "checkpoint_averaged.pt"
    with pytest.raises(SystemExit, match=r"teacher run .*en-de.teacher.dropout0.2 was trained with other settings "
                                         r"\(cap_minutes 150.0, here 95.0\): give the flags"):
        study(None).teacher_checkpoint("en-de")  # --max-minutes 95 but no --teacher-max-minutes: 95


def test_the_teachers_dropout_is_in_its_run_and_its_name(tmp_path):
    """--teacher-dropout trains the study's own teacher at that dropout, in a run named with it (a
    teacher of the default dropout keeps its own run); it contradicts --teacher-run, and must be a
    probability."""
    import argparse

    from benchmarks.mt_distill import DistillStudy

    def job(dropout):
        args = argparse.Namespace(work_dir=tmp_path, results_dir=tmp_path, data_root=tmp_path, eval_every=250,
                                  max_minutes=95.0, teacher_max_minutes=150.0, teacher_dropout=dropout)
        return DistillStudy(args).teacher_job("en-de")

    default, chosen = job(None), job(0.2)
    assert default.name == "en-de.teacher" and "--dropout" not in default.train_args
    assert chosen.name == "en-de.teacher.dropout0.2" and chosen.train_args[-2:] == ["--dropout", "0.2"]
    assert chosen.cap_minutes == default.cap_minutes == 150.0
    both = run([sys.executable, "-m", "benchmarks.mt_distill", "--stage", "teacher", "--teacher-dropout", "0.2",
                "--teacher-run", tmp_path], check=False)
    assert both.returncode == 2 and "--teacher-dropout sets the study's own teacher" in both.stderr
    wrong = run([sys.executable, "-m", "benchmarks.mt_distill", "--stage", "teacher", "--teacher-dropout", "1.5"],
                check=False)
    assert wrong.returncode == 2 and "--teacher-dropout 1.5: a dropout probability" in wrong.stderr


def test_variants_are_named_students():
    from benchmarks.mt_distill import variants_of

    assert variants_of([], ["--arch a"]) == {"variant": "--arch a"}
    assert variants_of(["six", "three"], ["--arch a", "--arch a --encoder-layers 3"]) == {
        "six": "--arch a", "three": "--arch a --encoder-layers 3"}
    assert variants_of([], []) == {}
    for names in (["same", "same"], ["resmlp_mt_small", "b"], ["a.b", "c"]):
        with pytest.raises(ValueError, match="must be unique"):
            variants_of(names, ["--arch a", "--arch b"])
    with pytest.raises(ValueError, match="1 names, 0 flags"):
        variants_of(["lonely"], [])


def test_the_report_reproduces_the_whole_study_with_its_flags():
    from benchmarks.mt_distill import study_command

    flags = ["--pairs", "en-de", "--variant-flags=--arch resmlp_mt_small_deep_shallow --token-mixer-heads 4"]
    expected = ("python -m benchmarks.mt_distill --stage all --pairs en-de "
                "'--variant-flags=--arch resmlp_mt_small_deep_shallow --token-mixer-heads 4'")
    assert study_command(["--stage", "report", *flags]) == expected
    assert study_command([*flags[:2], "--stage=speed", flags[2]]) == expected
    assert study_command(flags) == expected


@pytest.mark.slow
def test_the_study_runs_every_stage_and_reports_the_goals(teacher, tmp_path):
    """python -m benchmarks.mt_distill on the tiny corpus, tiny models (one segment of training each:
    a budget of 0 minutes stops every run at its first evaluation): teacher curve, distilled
    data, students on both data, the decoding benchmark (of the best student: measuring every
    student is the speed stage's loop, tested on its own below), the report with its summary keys
    and every measured student's speed, the best first.
    The teacher's encoder and decoder have the same number of heads (4), so that CTranslate2,
    where installed (requirements-bench.txt), converts it."""
    tiny = ("--encoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-layers 1 "
            "--decoder-layers 1 --decoder-attention-heads 4 --max-tokens 500 --num-workers 0 --log-interval 5 "
            "--max-source-positions 64 --max-target-positions 64")
    command = [sys.executable, "-m", "benchmarks.mt_distill", "--quick", "--stage", "all", "--pairs", "en-de",
               "--data-root", teacher["data"].parent, "--work-dir", tmp_path / "work",
               "--results-dir", tmp_path / "results",
               "--eval-every", "20", "--max-minutes", "0", "--progress-seconds", "0", "--no-progress-bar",
               "--speed-students", "best", "--students", "resmlp_mt_small_deep_shallow",
               "--variant-name", "relative", "--variant-flags=--token-mixer-positions relative",
               "--extra-train-args", tiny]
    # the students on the references need no teacher: they can train first (beside the teacher)
    references = run([*command[:5], "students", *command[6:], "--student-targets", "references"])
    assert "2 to run" in references.stdout and not (tmp_path / "work" / "distilled").exists()
    result = run(command)
    assert "[students] 4 runs: 2 cached (skipped), 2 to run" in result.stdout
    assert "[students] en-de relative on distilled: " in result.stdout  # where each trained student is
    out = json.loads((tmp_path / "results" / "mt_distill.json").read_text())
    rows = out["pairs"]["en-de"]["rows"]
    assert [(r["model"], r["data"]) for r in rows] == [
        ("teacher (Transformer)", "references"), ("resmlp_mt_small_deep_shallow", "distilled"),
        ("resmlp_mt_small_deep_shallow", "references"), ("relative", "distilled"), ("relative", "references")]
    assert all(r["parameters"] > 0 for r in rows)
    summary = out["summary"]
    assert set(summary) >= {"student", "teacher_test_bleu", "student_test_bleu", "speedup_b128", "speedup_b1"}
    assert summary["teacher_test_bleu"] == rows[0]["test"]
    distilled = [r for r in rows if r["data"] == "distilled"]
    assert summary["student_test_bleu"] == max(distilled, key=lambda r: r["valid"])["test"]  # chosen on valid
    assert out["goals"] and all(isinstance(g["met"], bool) for g in out["goals"])
    # the speed stage's rows with a vocabulary map: one map, learned from the references, for both
    assert (tmp_path / "work" / "speed" / "en-de.vmap.txt").is_file()
    speed = out["pairs"]["en-de"]["speed"]
    best = max((r for r in rows if r["data"] == "distilled"), key=lambda r: r["valid"])["model"]
    by_student = out["pairs"]["en-de"]["speed_by_student"]  # every measured student: here the best
    assert list(by_student) == [best] and by_student[best] == speed
    assert set(summary) >= {"speedup_b128_vocabulary_map", "speedup_b1_vocabulary_map"}
    if "b128" in speed:  # CTranslate2 installed: the teacher's rows exist, with and without the map
        assert speed["b128_vocabulary_map"]["vocabulary_map"] and not speed["b128"]["vocabulary_map"]
        assert speed["b128_vocabulary_map"]["student_engine"] == "API engine=onnx, vocabulary map"
        assert summary["speedup_b1_vocabulary_map"] == speed["b1_vocabulary_map"]["speedup"] > 0
    text = (tmp_path / "results" / "mt_distill.md").read_text()
    for student, measured in by_student.items():  # when, at which commit, and where batch 1's time goes
        assert measured["measured"]["date"] and len(measured["measured"]["git_commit"]) == 40, student
        split = measured["batch1_time_split"]
        assert sum(split["ms"].values()) == pytest.approx(split["total_ms"]), student
        assert f"Batch 1, {student}, ONNX int8, where a sentence's" in text
    assert "Speed measured: " in text
    exported = out["pairs"]["en-de"]["export"]  # the best, loaded back with from_pretrained, which translated
    assert exported["folder"].endswith(f"work/export/en-de.{best}")
    assert (tmp_path / "work" / "export" / f"en-de.{best}" / "model.pt").is_file()
    assert isinstance(exported["translation"], str) and "from_pretrained" in text
    assert "## Goals" in text and f" {tmp_path}" not in text and f"`{tmp_path}" not in text  # no absolute paths
    # a rerun trains nothing again
    again = run(command)
    assert "0 to run" in again.stdout and "translating the training sources" not in again.stdout
    assert f"[speed] en-de {best} at beam 4: cached" in again.stdout
    assert result.returncode == 0
    # the report gives every student whose speed was measured, the best first (here the other
    # student's figures are a copy of the best's)
    other = ({"relative", "resmlp_mt_small_deep_shallow"} - {best}).pop()
    speed_dir = tmp_path / "work" / "speed"
    (speed_dir / f"en-de.{other}.json").write_text((speed_dir / f"en-de.{best}.json").read_text())
    run([*command[:5], "report", *command[6:]])
    by_student = json.loads((tmp_path / "results" / "mt_distill.json").read_text())["pairs"]["en-de"][
        "speed_by_student"]
    assert list(by_student) == [best, other] and by_student[other] == by_student[best]
    text = (tmp_path / "results" / "mt_distill.md").read_text()
    assert f"Batch 1, {other}, ONNX int8, where a sentence's" in text
    if "b128" in speed:  # with CTranslate2, the speed table has the other student's rows too
        assert f"| {other} | 128 |" in text
    else:  # without it, no table of speedups, and the page says why
        assert "| speedup over CTranslate2 int8 |" not in text and "CTranslate2 not installed" in text
    # --teacher-run: a finished curve run is the teacher (here the study's own): nothing trains, the
    # report's teacher row is that run's and its folder is recorded
    own = tmp_path / "work" / "distill" / "en-de.teacher"
    teacher_stage = run([*command[:5], "teacher", *command[6:], "--teacher-run", own])
    assert "(--teacher-run): nothing to train" in teacher_stage.stdout
    run([*command[:5], "report", *command[6:], "--teacher-run", own])
    out2 = json.loads((tmp_path / "results" / "mt_distill.json").read_text())
    assert out2["pairs"]["en-de"]["rows"] == rows and out2["settings"]["teacher_run"].endswith("distill/en-de.teacher")
    assert out2["settings"]["teacher_run_recipe"]["system"] == "transformer"
    assert "the teacher the finished run" in (tmp_path / "results" / "mt_distill.md").read_text()
    en_fr = [x if x != "en-de" else "en-fr" for x in command]
    for argv, bad, problem in ((command, tmp_path / "nothing", "no result.json there"),
                               (en_fr, own, "it is a run of en-de, --pairs is en-fr")):
        refused = run([*argv[:5], "teacher", *argv[6:], "--teacher-run", bad], check=False)
        assert refused.returncode == 2 and f"--teacher-run {bad}: {problem}" in refused.stderr, refused.stderr


def test_the_speed_stage_measures_every_distilled_student_or_the_best(tmp_path, monkeypatch):
    """--speed-students all: one bench_decode run per distilled student, each beside the teacher,
    into its own figures; best: only the best by valid sacreBLEU. Figures newer than both
    checkpoints are kept (cached), older ones measured again."""
    import argparse

    from benchmarks import bench_decode
    from benchmarks.mt_distill import DistillStudy

    ckpt = {name: tmp_path / f"{name}.pt" for name in ("teacher", "a", "b")}
    for path in ckpt.values():
        path.write_bytes(b"")
    students = [{"name": "a", "checkpoint": ckpt["a"], "valid": 30.0},
                {"name": "b", "checkpoint": ckpt["b"], "valid": 31.0}]
    measured = []

    def bench(argv):
        out = argv[argv.index("--out") + 1]
        beams = int(argv[argv.index("--beam") + 1]), int(argv[argv.index("--resmlp-beam") + 1])
        measured.append((argv[argv.index("--resmlp") + 1], argv[argv.index("--transformer") + 1], out, beams))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".json").write_text(json.dumps({"settings": {"vocabulary_map": None, "beam": beams[0],
                                                                "resmlp_beam": beams[1]}}))

    monkeypatch.setattr(bench_decode, "main", bench)
    scored = []
    for choice, beams, expected in (("best", [4], [("b", 4)]), ("all", [4], [("a", 4)]),  # b's first figures kept
                                    ("best", [4, 1], [("b", 1)])):  # greedy too: b again, at beam 1
        args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results",
                                  data_root=tmp_path / "data", pairs=["en-de"], speed_students=choice,
                                  vocabulary_map=False, quick=True, teacher_checkpoint=None, student_beams=beams,
                                  threads=1)
        study = DistillStudy(args)
        monkeypatch.setattr(study, "distilled_students", lambda pair: students)
        monkeypatch.setattr(study, "export", lambda pair, best: None)
        monkeypatch.setattr(study, "teacher_checkpoint", lambda pair: ckpt["teacher"])
        monkeypatch.setattr(study, "data", lambda pair: tmp_path / "data")
        monkeypatch.setattr(study, "sacrebleu", lambda pair, checkpoint, split, beam: scored.append(
            (Path(checkpoint).stem, split, beam)) or 30.0 + beam)
        measured.clear()
        study.speed()
        assert [(Path(m[0]).stem, m[3][1]) for m in measured] == expected, choice
        assert all(m[1] == str(ckpt["teacher"]) and m[3][0] == 4 for m in measured)  # the teacher at beam 4
        assert all(m[2].endswith(f"speed/en-de.{Path(m[0]).stem}" + ("" if m[3][1] == 4 else f".beam{m[3][1]}"))
                   for m in measured)
    # at beam 1, the teacher and the measured student are scored on valid and test, once
    assert scored == [("teacher", "valid", 1), ("teacher", "test", 1), ("b", "valid", 1), ("b", "test", 1)]
    assert json.loads((tmp_path / "work" / "speed" / "en-de.b.beam1.scores.json").read_text())["test"] == 31.0
    measured.clear()
    study.speed()
    assert len(scored) == 4 and measured == []  # cached
    from benchmarks import mt_distill

    monkeypatch.setattr(mt_distill, "_speed_summary", lambda speed: speed and "figures")
    points = study.operating_points("en-de", students, ckpt["teacher"])
    assert points["b"] == [{"beam": 1, "valid": 31.0, "test": 31.0, "speed": "figures"}]
    # b trained on (a grown budget: its reported model changed): its figures are of the earlier file, so
    # the report leaves them out and the speed stage measures and scores it again
    later = ckpt["b"].stat().st_mtime + 10
    os.utime(ckpt["b"], (later, later))
    assert "b" not in study.operating_points("en-de", students, ckpt["teacher"])
    assert "teacher" in study.operating_points("en-de", students, ckpt["teacher"])
    assert study.measured(study.speed_file("en-de", "b", 4), ckpt["b"], ckpt["teacher"]) is None
    measured.clear()
    study.speed()
    assert sorted((Path(m[0]).stem, m[3][1]) for m in measured) == [("b", 1), ("b", 4)]
    assert scored[4:] == [("b", "valid", 1), ("b", "test", 1)]


def test_other_beams_of_the_students_are_their_own_operating_points_with_both_goals():
    """--student-beams 4 1: the best student decoded greedily is reported beside beam 4 (scores and
    speedups over the teacher at beam 4) and checked against both goals at once."""
    from benchmarks.mt_distill import _speed_summary, assess, markdown, summary

    def bench(student_speed):
        rows = [{"group": group, "system": system, "engine": engine, "precision": "int8", "batch_size": batch,
                 "vocabulary_map": False, "sentences_per_second": v, "rounds": [{"sentences_per_second": v}]}
                for group, batch, (mine, theirs) in (("batch", 128, student_speed), ("latency", 1, (150.0, 100.0)))
                for system, engine, v in (("ResMLP", "API engine=onnx", mine), ("Transformer", "CTranslate2", theirs))]
        return {"rows": rows, "settings": {"date": "2026-12-07"}, "machine": {"git_commit": None}}

    trained = {"train_minutes": 90.0, "updates": 4000, "converged": True}
    teacher = {"model": "teacher (Transformer)", "data": "references", "test": 38.6, "valid": 38.4, **trained}
    student = {"model": "s", "data": "distilled", "test": 38.5, "valid": 38.3, **trained}
    greedy = {"beam": 1, "test": 38.2, "valid": 37.8, "speed": _speed_summary(bench((500.0, 200.0)))}
    out = {"settings": {"pairs": ["en-de"], "eval_every": 250, "max_minutes": 95, "command": "python -m x",
                        "teacher_run": "t"},
           "machine": {"cpu": "cpu", "cores": 2},
           "pairs": {"en-de": {"rows": [teacher, student], "speed": _speed_summary(bench((300.0, 200.0))),
                               "speed_by_student": {"s": _speed_summary(bench((300.0, 200.0)))},
                               "operating_points": {"teacher": [{"beam": 1, "test": 37.3, "valid": 37.8,
                                                                 "speed": None}], "s": [greedy]}}}}
    out["summary"] = s = summary(out)
    assert (s["student_beam"], s["speedup_b128"], s["speedup_b1"]) == (4, 1.5, 1.5)
    assert s["operating_points"] == [{"student_beam": 1, "student_test_bleu": 38.2, "student_valid_bleu": 37.8,
                                      "speedup_b128": 2.5, "speedup_b1": 1.5, "speedup_b128_vocabulary_map": None,
                                      "speedup_b1_vocabulary_map": None}]
    out["goals"] = goals = assess(out)
    assert [g["met"] for g in goals] == [True, False, False]  # quality; speed at beam 4; both at beam 1 (-0.6 valid)
    assert goals[2]["goal"].startswith("Both, the student decoded at beam 1 (the teacher at beam 4)")
    assert "valid 37.80 vs 38.40" in goals[2]["figures"] and "2.50x at batch 128" in goals[2]["figures"]
    greedy["valid"] = 38.1  # within 0.5 of the teacher on both: met
    out["summary"] = summary(out)
    assert assess(out)[2]["met"]
    text = markdown({**out, "goals": assess(out)})
    assert "| s | 4 | 38.50 | 38.30 | 300.0 | 1.50x | 150.0 | 1.50x |" in text
    assert "| s | 1 | 38.20 | 38.10 | 500.0 | 2.50x | 150.0 | 1.50x |" in text
    assert "| teacher | 4 | 38.60 | 38.40 | - | - | - | - |" in text and "| teacher | 1 | 37.30 | 37.80 |" in text


def test_the_speedup_is_the_median_of_the_rounds_ratios_and_the_page_shows_their_range():
    """A student's speedup over the teacher's CTranslate2 int8 is taken round by round, as
    bench_decode's ratios (the machine drifts between rounds: the medians of the two rows can come
    from different rounds), and the page gives the rounds' range beside it."""
    from benchmarks.mt_distill import _speed_summary, markdown

    def row(system, engine, speeds):
        return {"group": "batch", "system": system, "engine": engine, "precision": "int8", "batch_size": 128,
                "vocabulary_map": False, "sentences_per_second": sorted(speeds)[1],
                "rounds": [{"sentences_per_second": v} for v in speeds]}

    bench = {"rows": [row("ResMLP", "API engine=onnx", [300.0, 240.0, 330.0]),
                      row("Transformer", "CTranslate2", [200.0, 150.0, 260.0])],
             "settings": {"date": "2026-12-07T10:00:00+00:00", "interleaved": [["a", "b"]]},
             "machine": {"git_commit": "0" * 40}}
    speed = _speed_summary(bench)
    assert speed["b128"]["speedup_rounds"] == [1.5, 1.6, 330.0 / 260.0]
    assert speed["b128"]["speedup"] == 1.5  # the median of the rounds' ratios
    assert 300.0 / 200.0 == 1.5 and speed["interleaved"]  # (here the medians' ratio happens to agree)
    bench["rows"][1]["rounds"][1]["sentences_per_second"] = 120.0  # a slow round for the teacher only
    assert _speed_summary(bench)["b128"]["speedup"] == 1.5 and 240.0 / 120.0 == 2.0
    bench["rows"][0]["sentences_per_second"] = 330.0  # medians from other rounds than each other: ignored
    assert _speed_summary(bench)["b128"]["speedup"] == 1.5

    out = {"settings": {"pairs": ["en-de"], "eval_every": 250, "max_minutes": 95, "command": "python -m x",
                        "teacher_run": "t"},
           "machine": {"cpu": "cpu", "cores": 2}, "goals": [],
           "pairs": {"en-de": {"rows": [], "speed_by_student": {"s": _speed_summary(bench)}}}}
    text = markdown(out)
    assert "| 1.50x (1.27-2.00) |" in text
    assert "speedup: the median of the rounds' ratios (their range in brackets), both systems decoding in turn" in text


def test_a_student_that_diverged_is_on_the_page_and_fails_the_distillation_goal():
    """A student whose run on the distilled targets diverged (the curve run is finished with its
    evaluations before, ``diverged``) stays on the page, marked, and counts as not improved by
    distillation, whatever its best checkpoint before the divergence scored; the others are
    still compared."""
    from benchmarks.mt_distill import _row, assess, markdown

    def result(test, diverged=None):
        e = {"test": {"sacrebleu": test}, "valid": {"sacrebleu": test + 0.5}}
        return {"eval": {"best": e, "last": e}, "updates": 750, "train_minutes": 30.0, "converged": False,
                "diverged": diverged, "points": [{"updates": 750, "valid_bleu": test + 0.5}]}

    broken = {"after_update": 750, "segment": [750, 1000], "log": "train.0001000.log"}
    rows = [_row("deep", "distilled", result(29.9, broken)), _row("deep", "references", result(28.0)),
            _row("small", "distilled", result(31.0)), _row("small", "references", result(30.0))]
    out = {"settings": {"pairs": ["en-de"], "eval_every": 250, "max_minutes": 150, "command": "python -m x",
                        "teacher_run": "t"}, "machine": {"cpu": "cpu", "cores": 2},
           "pairs": {"en-de": {"rows": rows}}, "summary": None}
    goals = assess(out)
    assert len(goals) == 1 and not goals[0]["met"]
    assert goals[0]["figures"] == ("deep diverged on the distilled after update 750 (its best before: test 29.90 "
                                   "distilled, 28.00 references); small +1.00 test with the same budget (30.0 vs "
                                   "30.0 training minutes, 750 vs 750 updates); at 750 updates each, valid 31.50 vs "
                                   "30.50 (+1.00)")
    rows[0]["diverged"] = None  # the same figures without the divergence: improved
    assert assess(out)[0]["met"]
    rows[0]["diverged"] = broken
    text = markdown({**out, "goals": goals})
    assert "| deep | distilled | - | 29.90 | 30.40 | 750 | 30.0 | no (diverged after update 750) |" in text
    assert "| small | distilled | - | 31.00 | 31.50 | 750 | 30.0 | no (budget) |" in text


def test_a_diverged_student_is_never_the_best_one_to_measure_and_ship(tmp_path, monkeypatch):
    """The students the speed stage, the operating points and the export choose from are the distilled
    runs that did not diverge: a diverged run's best checkpoint is not a recipe a user can repeat."""
    import argparse

    from benchmarks.mt_distill import DistillStudy

    args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results", data_root=tmp_path / "data",
                              pairs=["en-de"], students=["resmlp_mt_small", "resmlp_mt_small_deep_shallow"],
                              variants={}, max_minutes=150.0, eval_every=250, threads=1)
    study = DistillStudy(args)
    monkeypatch.setattr(study, "distilled", lambda pair: tmp_path / "distilled")

    def cached(job):
        e = {"test": {"sacrebleu": 30.0}, "valid": {"sacrebleu": 35.0 if "deep" in job.name else 31.0}}
        return {"eval": {"best": e}, "diverged": {"after_update": 750} if "deep" in job.name else None}

    monkeypatch.setattr(study, "cached", cached)
    assert [s["name"] for s in study.distilled_students("en-de")] == ["resmlp_mt_small"]
    assert study.best_student("en-de")["valid"] == 31.0


def test_the_students_stage_says_which_student_diverged(tmp_path, monkeypatch, caplog):
    """Where the stage prints each trained student's checkpoint, a diverged one is a warning that
    says so, with what to do, so that nobody ships its checkpoint from before as a converged model."""
    import argparse
    import logging

    from benchmarks.mt_distill import DistillStudy

    args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results", data_root=tmp_path / "data",
                              pairs=["en-de"], students=["resmlp_mt_small", "resmlp_mt_small_deep_shallow"],
                              variants={}, max_minutes=150.0, eval_every=250, threads=1,
                              student_targets=["distilled"])
    study = DistillStudy(args)
    (tmp_path / "distilled").mkdir()
    (tmp_path / "distilled" / "prep.json").write_text("{}")
    monkeypatch.setattr(study, "distilled", lambda pair: tmp_path / "distilled")
    ran = []
    monkeypatch.setattr(study, "run_jobs", lambda stage, slots, runner: ran.extend(j.name for s in slots for j in s))

    def cached(job):
        e = {"test": {"sacrebleu": 31.4}, "valid": {"sacrebleu": 29.9}}
        return {"eval": {"best": e}, "diverged": {"after_update": 750} if "deep" in job.name else None}

    monkeypatch.setattr(study, "cached", cached)
    with caplog.at_level(logging.INFO, logger="mt_distill"):
        study.students()
    assert ran == ["en-de.resmlp_mt_small.distilled", "en-de.resmlp_mt_small_deep_shallow.distilled"]
    said = {r.getMessage().split(":")[0]: r for r in caplog.records if r.getMessage().startswith("[students]")}
    deep, small = said["[students] en-de resmlp_mt_small_deep_shallow on distilled"], \
        said["[students] en-de resmlp_mt_small on distilled"]
    assert deep.levelno == logging.WARNING and "DIVERGED after update 750" in deep.getMessage()
    assert small.levelno == logging.INFO and "DIVERGED" not in small.getMessage()
