"""benchmarks.common: results files name no folder of the machine that wrote them."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import REPO, repo_relative, write_result
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
    code = ("import sys, resmlp_core, resmlp_mt, mt_tools, mt_tools.evaluate, mt_tools.corpus, mt_tools.recipes, vision, "
            "vision.train, vision.knn; print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=TESTS_REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
