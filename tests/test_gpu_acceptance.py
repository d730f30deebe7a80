"""benchmarks/gpu_acceptance.py: its dry run (the GPU run's code on the CPU at tiny sizes) reports
every section, stage and check; the deadline skips stages with a clear status; fairseq log
parsing (losses, words/s, overflow and NaN detection)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_acceptance

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def acc():
    return gpu_acceptance


def expected_checks(acc, mode: str) -> dict:
    checks = acc.Checks()
    acc.declare_checks(checks, mode)
    return checks.items


def test_every_check_is_named_once_with_a_threshold(acc):
    for mode in ("gpu", "dry-run"):
        items = expected_checks(acc, mode)
        assert len(items) == 32
        assert all(i["threshold"] and i["section"] in ("translation", "vision") for i in items.values())
        goals = {n for n, i in items.items() if i["kind"] == "goal"}
        assert goals == {"mt.goal.resmlp_wps_vs_transformer", "vision.goal.s12_folded_img_s",
                         "vision.goal.s12_folded_compiled_img_s"}


FAIRSEQ_LOG = """\
2026-01-01 10:00:00 | INFO | fairseq_cli.train | num. shared model params: 1,234,567 (num. trained: 1,234,567)
2026-01-01 10:00:01 | INFO | fairseq.trainer | begin training epoch 1
2026-01-01 10:00:02 | INFO | train_inner | {"epoch": 1, "update": 0.1, "loss": "9.5", "nll_loss": "9.4", \
"wps": "1000", "gnorm": "1.2", "loss_scale": "128", "num_updates": "50", "lr": "0.001"}
2026-01-01 10:00:03 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, \
setting loss scale to: 64.0
2026-01-01 10:00:04 | INFO | train_inner | {"epoch": 1, "update": 0.2, "loss": "8.5", "nll_loss": "8.4", \
"wps": "3000", "gnorm": "1.1", "loss_scale": "64", "num_updates": "100", "lr": "0.002"}
2026-01-01 10:00:05 | INFO | train_inner | {"epoch": 1, "update": 0.3, "loss": "7.5", "nll_loss": "7.4", \
"wps": "5000", "gnorm": "1.0", "loss_scale": "64", "num_updates": "150", "lr": "0.003"}
2026-01-01 10:00:06 | INFO | train_inner | {"epoch": 1, "update": 0.4, "loss": "6.5", "nll_loss": "6.4", \
"wps": "4000", "gnorm": "0.9", "loss_scale": "64", "num_updates": "200", "lr": "0.004"}
2026-01-01 10:00:07 | INFO | valid | {"epoch": 1, "valid_loss": "6.9", "valid_nll_loss": "6.8", \
"valid_num_updates": "210"}
2026-01-01 10:00:07 | INFO | train | {"epoch": 1, "train_loss": "8.0", "train_wpb": "3000", \
"train_num_updates": "210", "train_train_wall": "126"}
"""


def test_fairseq_figures(acc):
    fig = acc.fairseq_figures(FAIRSEQ_LOG)
    assert fig["updates"] == 210 and fig["log_records"] == 4 and fig["parameters"] == 1234567
    assert fig["first_loss"] == 9.5 and fig["last_loss"] == 6.5  # quarter means of 4 intervals
    assert fig["wps"] == 4000.0  # median of the intervals after the first
    assert fig["words_per_train_second"] == pytest.approx(210 * 3000 / 126)
    assert fig["valid_loss"] == 6.9 and fig["loss_scale"] == 64.0 and fig["final_lr"] == 0.004
    assert fig["overflows"] == 1 and fig["nonfinite"] == 0 and fig["fatal_errors"] == 0
    assert fig["calibration_overflows"] == 0  # the overflow came after the first log interval
    early = FAIRSEQ_LOG.replace("fairseq.trainer | begin training epoch 1\n",
                                "fairseq.trainer | begin training epoch 1\n"
                                + "2026-01-01 10:00:01 | INFO | fairseq.trainer | NOTE: gradient overflow detected, "
                                  "ignoring gradient, setting loss scale to: 64.0\n" * 2)
    assert acc.fairseq_figures(early)["overflows"] == 3 and acc.fairseq_figures(early)["calibration_overflows"] == 2
    bad = acc.fairseq_figures(FAIRSEQ_LOG.replace('"loss": "7.5"', '"loss": "nan"')
                              + "FloatingPointError: Minimum loss scale reached (0.0001).\n")
    assert bad["nonfinite"] == 1 and bad["fatal_errors"] == 2


def test_deadline_skips_stages_and_reports_every_check(acc, tmp_path):
    args = argparse.Namespace(dry_run=True, deadline_s=0.01, workdir=str(tmp_path / "work"), data_root=None,
                              out=str(tmp_path / "r"), mt_data=None, mt_minutes=None, mt_warmup=None,
                              strict_goals=False, stages=None)
    run = acc.Acceptance(args)
    ran = []
    run.stage("vision_bench", "vision_bench", ran.append)
    assert not ran and run.stages["vision_bench"]["status"] == "skipped: out of time"
    assert run.finish() == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert {c["name"] for c in report["checks"]} == set(expected_checks(acc, "dry-run"))
    assert all(c["status"] == "skipped" for c in report["checks"])
    assert "skipped: out of time" in (tmp_path / "r.md").read_text()


def test_stages_not_selected_are_not_failures(acc, tmp_path):
    """--stages runs a subset (a second GPU call re-checking some stages): the others' checks
    are reported 'not selected' and do not count in the exit status."""
    args = argparse.Namespace(dry_run=True, deadline_s=300, workdir=str(tmp_path / "work"), data_root=None,
                              out=str(tmp_path / "r"), mt_data=None, mt_minutes=None, mt_warmup=None,
                              strict_goals=False, stages=["vision_cli"])
    run = acc.Acceptance(args)
    ran = []
    run.stage("vision_bench", "vision_bench", ran.append)
    assert not ran and run.stages["vision_bench"]["status"] == acc.NOT_SELECTED
    run.stage("vision_cli", "vision_cli", lambda cap: [run.checks.set(n, 0, True) for n in run.checks.items
                                                       if n.startswith("vision.cli.")])
    for name, budget in (("mt_prep", "mt_prep"), ("mt_train_resmlp", "mt_train"), ("mt_train_transformer", "mt_train"),
                         ("mt_generate", "mt_generate"), ("vision_dino", "vision_dino"),
                         ("vision_compile", "vision_compile")):
        run.stage(name, budget, ran.append)
    assert not ran
    assert run.finish() == 0
    report = json.loads((tmp_path / "r.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["vision.cli.teacher"] == "pass" and status["mt.resmlp.train.exit_ok"] == "not selected"
    with pytest.raises(SystemExit):
        acc.build_parser().parse_args(["--stages", "nonsense"])


def test_gpu_mode_needs_a_gpu(acc):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the GPU mode would start the real run")
    with pytest.raises(SystemExit) as err:
        acc.main([])
    assert err.value.code == 2


@pytest.mark.slow
def test_dry_run(tmp_path, multi30k_dir, cifar10_dir, acc):
    """The whole dry run on real data slices. The deadline is raised above the default 115 s
    (which the run keeps alone on this machine) because the test suite runs beside it."""
    out = tmp_path / "acceptance"
    cmd = [sys.executable, "-m", "benchmarks.gpu_acceptance", "--dry-run", "--out", str(out),
           "--workdir", str(tmp_path / "work"), "--data-root", str(multi30k_dir.parent), "--deadline-s", "420"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    report = json.loads(Path(f"{out}.json").read_text())
    failing = [c for c in report["checks"] if c["status"] not in ("pass", "n/a")]
    assert proc.returncode == 0 and not failing, f"{failing}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"

    assert report["mode"] == "dry-run" and report["passed"] and report["machine"]["torch"]
    for key in ("translation", "vision", "machine", "settings", "stages", "checks"):
        assert key in report
    assert set(report["translation"]) >= {"prep", "train", "generate", "ratios"}
    assert set(report["vision"]) >= {"bench", "compile", "cli", "dino"}
    assert set(report["stages"]) == {"vision_bench", "mt_prep", "mt_train_resmlp", "mt_train_transformer",
                                     "mt_generate", "vision_cli", "vision_dino", "vision_compile"}
    assert all(s["status"] == "ok" for s in report["stages"].values())
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == set(expected_checks(acc, "dry-run"))
    # the GPU-only thresholds are "not applicable" on the CPU, never failures
    for name in ("mt.goal.resmlp_wps_vs_transformer", "vision.goal.s12_folded_img_s",
                 "vision.goal.s12_folded_compiled_img_s", "mt.resmlp.train.fp16_overflow", "mt.resmlp.generate.bleu"):
        assert checks[name]["status"] == "n/a" and "not applicable on CPU" in checks[name]["note"]
    for system in ("resmlp", "transformer"):
        train = report["translation"]["train"][system]
        assert train["wps"] > 0 and train["updates"] >= 5 and train["last_loss"] < train["first_loss"]
        gen = report["translation"]["generate"][system]
        assert gen["sentences"] == gen["references"] == 24 and gen["sentences_per_second"] > 0
    bench = report["vision"]["bench"]
    assert set(bench["inference"]["img_per_s"]) == {"timm", "ours", "ours_folded"}
    assert set(bench["train_step"]["img_per_s"]) == {"timm", "ours"}
    assert report["vision"]["cli"]["student_hard"]["distillation"] == "hard"
    dino = report["vision"]["dino"]
    assert dino["epochs"] == [0, 1] and dino["resumed"] and 0.0 <= dino["knn"]["top1"] <= 100.0
    md = Path(f"{out}.md").read_text()
    assert all(name in md for name in checks) and all(name in proc.stdout for name in checks)


def test_the_deadline_counts_from_the_run_not_the_import(acc, tmp_path, monkeypatch):
    """A process may import the study long before it runs it (a test session does): the run's
    deadline starts with the run."""
    from benchmarks import harness

    monkeypatch.setattr(harness, "T0", harness.T0 - 3600)  # imported an hour ago
    args = argparse.Namespace(dry_run=True, deadline_s=300, workdir=str(tmp_path / "work"), data_root=None,
                              out=str(tmp_path / "r"), mt_data=None, mt_minutes=None, mt_warmup=None,
                              strict_goals=False, stages=None)
    run = acc.Acceptance(args)
    assert run.prof["deadline_s"] - run.prof["reserve_s"] - 5 < run.remaining() <= run.prof["deadline_s"]
