"""benchmarks.common: results files name no folder of the machine that wrote them."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from benchmarks.common import REPO, cli_path, repo_relative, training_minutes, write_result
from conftest import REPO as TESTS_REPO


def test_absolute_paths_become_relative_to_the_repository():
    root = "/work/repo"
    assert repo_relative("/work/repo/data-bin/x", root) == "data-bin/x"
    assert repo_relative("/work/repo/.venv/bin/python -m x", root) == ".venv/bin/python -m x"
    assert repo_relative("/work/shared/data/cifar10", root) == "../shared/data/cifar10"
    assert repo_relative("--data=/tmp/d/cifar10", root) == "--data=../../tmp/d/cifar10"
    assert repo_relative("PYTHONPATH=/work/repo:/work/other", root) == "PYTHONPATH=.:../other"
    assert repo_relative("[sweep](/work/repo/results/mt_sweep.json)", root) == "[sweep](results/mt_sweep.json)"
    assert repo_relative('File \\"/work/repo/benchmarks/x.py\\", line 3', root) == 'File \\"benchmarks/x.py\\", line 3'


def test_what_is_not_a_folder_of_this_machine_is_left_alone():
    root = "/work/repo"
    for text in ("https://github.com/facebookresearch/deit", "file:///x", "words/s", "1/2", "a / b", "../results/x.md",
                 "/usr/bin/python3", "/opt/conda/bin/python", "| 12.5 | 3/4 |"):
        assert repo_relative(text, root) == text


def test_nested_reports_are_relativised_keys_and_values_and_are_idempotent():
    root = "/work/repo"
    report = {"/work/repo/runs/a": ["/work/repo/runs/a/log", 1.5, None, ("/tmp/x",)], "n": 3}
    got = repo_relative(report, root)
    assert got == {"runs/a": ["runs/a/log", 1.5, None, ["../../tmp/x"]], "n": 3}
    assert repo_relative(got, root) == got


def test_write_result_writes_repository_relative_text(tmp_path):
    data = {"data": str(REPO / "data-bin" / "multi30k.en-de"), "python": sys.executable, "bleu": 35.2}
    write_result(tmp_path / "r.json", json.dumps(data, indent=1) + "\n")
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["data"] == "data-bin/multi30k.en-de" and got["bleu"] == 35.2
    assert not got["python"].startswith(("/work/", "/home/", "/tmp/"))
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary left


def test_no_model_package_imports_the_benchmarks():
    """The studies import the packages, never the other way round."""
    code = ("import sys, resmlp_core, resmlp_mt, mt_tools, mt_tools.evaluate, mt_tools.corpus, mt_tools.recipes, "
            "vision, vision.train, vision.knn, vision.evaluate, vision.speed; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=TESTS_REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


LOG = """2026-01-02 10:00:00 | INFO | fairseq_cli.train | task: TranslationTask
2026-01-02 10:00:01 | INFO | fairseq.trainer | begin training epoch 1
epoch 001:  10%|#         | 5/50 [00:01<00:09, 5.0it/s]
2026-01-02 10:00:05 | INFO | train_inner | {"epoch": 1, "update": 0.1, "loss": "9.5", "wps": "1200", "num_updates": "5"}
2026-01-02 10:00:06 | WARNING | fairseq.trainer | gradient overflow detected, ignoring gradient
2026-01-02 10:00:09 | INFO | valid | {"epoch": 1, "valid_loss": "8.25", "valid_num_updates": "10"}
2026-01-02 10:00:10 | INFO | train | {"epoch": 1, "train_num_updates": "10", "train_wpb": "300", \
"train_train_wall": "8"}
2026-01-02 10:00:10 | INFO | train_inner | {not json
"""


def test_fairseq_log_lines_are_parsed_once_for_every_reader():
    from benchmarks.common import parse_fairseq_log

    lines = list(parse_fairseq_log(LOG))
    assert [line.logger for line in lines] == ["fairseq_cli.train", "fairseq.trainer", "train_inner", "fairseq.trainer",
                                               "valid", "train", "train_inner"]
    assert lines[3].level == "WARNING" and lines[3].record is None
    assert lines[4].record == {"epoch": 1, "valid_loss": "8.25", "valid_num_updates": "10"}
    assert lines[4].time - lines[1].time == 8.0 and lines[-1].record is None
    assert list(parse_fairseq_log(LOG.splitlines(keepends=True))) == lines  # line by line, as a live reader gets them


def test_json_records_and_training_figures_from_the_one_parser():
    """parse_json_log as before (the regex it replaced), and the figures of a run."""
    import re
    from collections import defaultdict
    from datetime import datetime

    from benchmarks.fairseq_runs import parse_json_log, training_figures

    old = defaultdict(list)
    for line in LOG.splitlines():
        match = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| INFO \| (\w+) \| (\{.*\})\s*$", line)
        if match:
            try:
                record = json.loads(match.group(3))
            except json.JSONDecodeError:
                continue
            old[match.group(2)].append(dict(record,
                                            time=datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp()))
    assert parse_json_log(LOG) == dict(old)
    figures = training_figures(LOG)
    assert figures["updates"] == 10 and figures["words_per_second"] == 375.0
    assert figures["valid_curve"] == [{"minutes": 0.13, "num_updates": 10, "valid_loss": 8.25}]


def test_read_checkpoint_reads_weights_and_refuses_code_naming_the_file(tmp_path):
    import pickle

    import pytest
    import torch

    from benchmarks.common import read_checkpoint

    torch.save({"epoch": 3, "model": {"w": torch.ones(2)}}, tmp_path / "last.pth")
    assert read_checkpoint(tmp_path / "last.pth", mmap=True)["epoch"] == 3
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(subprocess.CompletedProcess(["x"], 0)))
    with pytest.raises(ValueError, match="evil.pth"):
        read_checkpoint(tmp_path / "evil.pth")


def test_training_minutes_accepts_zero_and_names_the_flag_of_a_bad_budget(capsys):
    parser = argparse.ArgumentParser(prog="study")
    parser.add_argument("--max-minutes", type=training_minutes)
    assert parser.parse_args(["--max-minutes", "0"]).max_minutes == 0.0
    assert parser.parse_args(["--max-minutes", "2.5"]).max_minutes == 2.5
    for bad, why in (("-1", "must be a finite number >= 0"), ("nan", "must be a finite number >= 0"),
                     ("ten", "is not a number of minutes")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--max-minutes", bad])
        err = capsys.readouterr().err
        assert f"argument --max-minutes: '{bad}'" in err and why in err


def test_drop_options_removes_options_in_every_spelling_and_keeps_the_rest():
    from benchmarks.common import drop_options

    argv = ["--stage", "curves", "--max-runs", "2", "--pairs", "en-de", "--max-runs=3", "--report-only",
            "--variant-flags=--max-runs 4", "--report-only-not"]
    assert drop_options(argv, {"--max-runs": True, "--report-only": False}) == [
        "--stage", "curves", "--pairs", "en-de", "--variant-flags=--max-runs 4", "--report-only-not"]
    assert drop_options(argv, {}) == argv
    # an option of one or more values: every value up to the next option, also at the end
    argv = ["--train-only", "transformer", "paper", "--pairs", "en-de", "--train-only=paper", "--train-only", "x"]
    assert drop_options(argv, {"--train-only": "+"}) == ["--pairs", "en-de"]


def test_path_flags_are_absolute_against_the_callers_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_path("runs/x") == tmp_path / "runs" / "x"
    assert cli_path("/a/b") == cli_path("/a/b").absolute()
    p = argparse.ArgumentParser()
    p.add_argument("--work-dir", type=cli_path, default=REPO / "checkpoints")
    assert p.parse_args(["--work-dir", "w"]).work_dir == tmp_path / "w"
    assert p.parse_args([]).work_dir == REPO / "checkpoints"


def test_studies_that_run_children_in_the_repository_take_absolute_path_flags():
    """A study whose trainings run with ``cwd=REPO`` and that reads their output itself must not keep
    a relative path flag as given: from another folder it would name two places."""
    spawning = [f for f in sorted((REPO / "benchmarks").glob("*.py"))
                if re.search(r"cwd=(str\()?REPO|from benchmarks\.(race_mt|harness) import", f.read_text())
                and f.name != "common.py"]
    assert len(spawning) >= 8, spawning
    offenders = [f"{f.name}:{i}" for f in spawning for i, line in enumerate(f.read_text().splitlines(), 1)
                 if re.search(r"add_argument\(.*type=Path\b", line) and "SUPPRESS" not in line]
    assert not offenders, f"path flags kept relative (use benchmarks.common.cli_path): {offenders}"
