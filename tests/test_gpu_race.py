"""benchmarks.gpu_race: its dry run (the GPU race's code on the CPU, through ``make gpu-race``),
the flags it gives fairseq-train, the words/s spread, the budgets stretched by the machine's
measured slowdown (also those of benchmarks/gpu_acceptance.py), a pair skipped for time, and
reports free of this machine's paths."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_acceptance, gpu_race, harness
from benchmarks.fairseq_runs import fairseq_figures, words_per_second_spread

REPO = Path(__file__).resolve().parents[1]


def race_args(tmp_path: Path, **kw) -> argparse.Namespace:
    args = dict(
        dry_run=True,
        pairs=None,
        minutes=None,
        max_tokens=None,
        deadline_s=None,
        out=str(tmp_path / "race"),
        workdir=str(tmp_path / "work"),
        data=None,
        data_root=None,
        strict_goals=False,
        score_worker=None,
    )
    args.update(kw)
    return argparse.Namespace(**args)


def test_words_per_second_spread():
    s = words_per_second_spread([5.0, 1.0, float("nan"), 3.0, 2.0, 4.0])
    assert s == {"median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 5.0, "n": 5}
    assert words_per_second_spread([])["n"] == 0
    log = "".join(
        f'2026-01-01 10:00:0{i} | INFO | train_inner | {{"loss": "{9 - i}", "wps": "{w}", "num_updates": "{10 * i}"}}\n'
        for i, w in enumerate([100, 4000, 5000, 3000, 6000], 1)
    )
    fig = fairseq_figures(log)
    # the first interval (start-up) is left out of the median and the spread
    assert fig["wps"] == 4500.0 and fig["wps_spread"]["min"] == 3000.0 and fig["wps_spread"]["n"] == 4


def test_slowdown_stretches_the_dry_run_budgets(monkeypatch, tmp_path):
    """A machine with load average 8 on 2 cores gives each process a quarter of a core: the dry
    runs' budgets (the race's and benchmarks/gpu_acceptance.py's) stretch 4x; the GPU run's never."""
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 8.0, 8.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    slow = harness.measure_slowdown(rounds=1)
    assert slow["load_per_core"] == 4.0 and slow["factor"] >= 4.0
    race = gpu_race.GpuRace(race_args(tmp_path))
    assert race.factor >= 4.0 and race.prof["deadline_s"] == pytest.approx(
        gpu_race.PROFILES["dry-run"]["deadline_s"] * race.factor
    )
    assert race.prof["minutes"] == gpu_race.PROFILES["dry-run"]["minutes"]  # the work stays the same
    acc = gpu_acceptance
    run = acc.Acceptance(
        argparse.Namespace(
            dry_run=True,
            deadline_s=None,
            workdir=str(tmp_path / "acc"),
            data_root=None,
            out=str(tmp_path / "a"),
            mt_data=None,
            mt_minutes=None,
            mt_warmup=None,
            strict_goals=False,
            stages=None,
        )
    )
    base = acc.PROFILES["dry-run"]
    assert run.prof["deadline_s"] >= 4 * base["deadline_s"]
    assert run.prof["budgets"]["mt_generate"][1] >= 4 * base["budgets"]["mt_generate"][1]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert 1.0 <= harness.measure_slowdown(rounds=1)["factor"] <= harness.MAX_SLOWDOWN


@pytest.mark.slow
def test_train_flags_reach_fairseq(tmp_path, monkeypatch):
    """The race's flags come after scripts/train_multi30k.sh's own: fairseq's parser must end
    with the race's model size, batch, precision and recipe (the later flag wins)."""
    from fairseq import options

    monkeypatch.chdir(REPO)  # --user-dir resmlp_mt
    fake = tmp_path / "fairseq-train"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dict.en.txt").write_text("")
    prof = gpu_race.PROFILES["gpu"]
    parsed = {}
    for system in ("resmlp", "transformer"):
        flags, env = gpu_race.recipe_flags(system, {"lr": 1e-3, "warmup": 300, "layerscale_init": 0.5, "norm": "pre"})
        extra = gpu_race.train_flags(prof, gpu_race.SIZES["gpu"]["base"][system], flags)
        out = subprocess.run(
            [str(REPO / "scripts" / "train_multi30k.sh"), "en-de", *extra],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, MODEL=system, DATA=str(tmp_path / "data"), FAIRSEQ_TRAIN=str(fake), **env),
        )
        argv = out.stdout.splitlines()
        parsed[system] = options.parse_args_and_arch(options.get_training_parser(), argv)
    r, t = parsed["resmlp"], parsed["transformer"]
    assert r.arch == "resmlp_mt" and r.layerscale_init == 0.5
    assert t.arch == "transformer" and (
        t.encoder_layers,
        t.decoder_layers,
        t.encoder_embed_dim,
        t.encoder_attention_heads,
    ) == (6, 6, 512, 8)
    assert t.encoder_normalize_before and t.decoder_normalize_before
    for a in (r, t):
        assert a.max_tokens == 8192 and a.fp16 and a.fp16_init_scale == 128 and not a.cpu
        assert a.lr == [1e-3] and a.warmup_updates == 300 and a.optimizer == "adam"
        assert a.save_interval_updates == 0 and a.validate_interval == 1000000 and a.no_save_optimizer_state


def test_dry_run_trains_to_an_update_budget():
    """The rehearsal's work is an update budget, so that a busy machine does the same work (seconds
    of training made a single update beside a test session, and a loss cannot fall over one); the
    GPU race stays a race for equal minutes, with no update budget."""
    dry, gpu = gpu_race.PROFILES["dry-run"], gpu_race.PROFILES["gpu"]
    flags = gpu_race.train_flags(dry, [], [])
    assert flags[flags.index("--max-update") + 1] == str(dry["max_update"])
    assert dry["min_updates"] == dry["max_update"] >= 4
    assert "--max-update" not in gpu_race.train_flags(gpu, [], [])
    acc = gpu_acceptance.PROFILES
    assert acc["dry-run"]["mt"]["min_updates"] == acc["dry-run"]["mt"]["max_update"] >= 4
    assert not acc["gpu"]["mt"]["max_update"]


def test_a_lanes_first_pair_always_runs(tmp_path, monkeypatch):
    """Lanes run side by side: each lane's first pair starts whatever the deadline; only a later
    pair of the same lane is skipped when its trainings and the scoring no longer fit."""
    race = gpu_race.GpuRace(race_args(tmp_path, pairs=["small", "base"], deadline_s=1.0))
    trained = []
    monkeypatch.setattr(race, "train", lambda pair, system: trained.append((pair, system)))
    race.train_pairs(["base"])
    assert trained == [("base", "resmlp"), ("base", "transformer")]
    race.train_pairs(["base", "small"])
    assert ("small", "resmlp") not in trained
    assert race.report["pairs"]["small"]["status"].startswith("skipped: out of time")


def test_pair_skipped_for_time_is_reported_not_failed(tmp_path):
    race = gpu_race.GpuRace(race_args(tmp_path, pairs=["small", "base"]))
    for name in [n for n in race.checks.items if not n.startswith("base.")]:
        race.checks.set(name, 0, True)
    race.skip_pair("base", "skipped: out of time (3s left, the pair needs 90s)")
    assert race.finish() == 0
    report = json.loads((tmp_path / "race.json").read_text())
    base = {c["name"]: c for c in report["checks"] if c["section"] == "base"}
    assert base and all(c["status"] == "n/a" and "out of time" in c["note"] for c in base.values())
    assert report["stages"]["train.base.resmlp"]["status"].startswith("skipped: out of time")
    assert "skipped: out of time" in (tmp_path / "race.md").read_text()


def test_pair_ratios_and_vision_findings(tmp_path):
    systems = {
        "resmlp": {
            "train": {"wps": 300.0, "updates": 30, "parameters": 10},
            "valid": {"sacrebleu": 20.0},
            "test": {"sacrebleu": 21.5},
        },
        "transformer": {
            "train": {"wps": 100.0, "updates": 10, "parameters": 20},
            "valid": {"sacrebleu": 19.0},
            "test": {"sacrebleu": 20.0},
        },
    }
    assert gpu_race.pair_ratios(systems) == {
        "wps": 3.0,
        "updates": 3.0,
        "parameters": 0.5,
        "valid_bleu_diff": 1.0,
        "test_bleu_diff": 1.5,
    }
    assert gpu_race.pair_ratios({"resmlp": systems["resmlp"]})["wps"] is None
    missing = gpu_race.vision_findings(tmp_path / "absent.json")
    assert missing["source"] is None and missing["open"]
    acc = {
        "machine": {"gpu_name": "H100"},
        "vision": {
            "bench": {"inference": {"batch": 256, "img_per_s": {"timm": 100.0, "ours": 150.0, "ours_folded": 120.0}}},
            "compile": {"variants": {"ours_folded": {"compile_s": 70.0, "rel_diff_vs_eager": 0.01}}, "img_per_s": {}},
        },
    }
    (tmp_path / "acc.json").write_text(json.dumps(acc))
    v = gpu_race.vision_findings(tmp_path / "acc.json")
    assert v["goals"] == {"folded >= 1.0x unfolded": False, "folded >= 1.25x timm": False, "compiled in < 60 s": False}
    assert v["folded_vs_unfolded"] == pytest.approx(0.8) and v["open"] is None


def test_scrub_paths():
    names = {"/r": "", "/r/runs/w": "<workdir>", "/usr/bin/python": "python"}
    got = harness.scrub_paths({"/r/runs/w/x": ["/r/scripts/a.py", "/usr/bin/python -m x", "/r"]}, names)
    assert got == {"<workdir>/x": ["scripts/a.py", "python -m x", "."]}


def test_cli_refuses(tmp_path):
    with pytest.raises(SystemExit) as err:
        gpu_race.main(["--dry-run", "--out", str(REPO / "results" / "gpu_race")])  # a dry run never writes results/
    assert err.value.code == 2
    import torch

    if not torch.cuda.is_available():  # else the GPU mode would start the real race
        with pytest.raises(SystemExit) as err:
            gpu_race.main([])
        assert err.value.code == 2


@pytest.mark.slow
def test_dry_run_through_make(tmp_path, multi30k_dir):
    """``make gpu-race ARGS=--dry-run``, the one command of the GPU machine, on a slice of the real
    Multi30k: both pairs trained, scored on valid and test, every check passing; under 2 minutes
    on the idle 2-core bench machine (its budgets stretch on a busy one), no absolute path of this
    machine in the results."""
    out, work = tmp_path / "out" / "race", tmp_path / "work"
    args = f"--dry-run --workdir {work} --out {out} --data-root {multi30k_dir.parent}"
    proc = subprocess.run(
        ["make", "-s", "gpu-race", f"PY={sys.executable}", f"ARGS={args}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    text, md = Path(f"{out}.json").read_text(), Path(f"{out}.md").read_text()
    report = json.loads(text)
    assert report["passed"] and report["mode"] == "dry-run"
    assert report["wall_seconds"] < 120 * report["budget_factor"]
    assert all(s["status"] == "ok" for s in report["stages"].values()) and len(report["stages"]) == 6
    for pair in ("small", "base"):
        pd = report["pairs"][pair]
        for system in ("resmlp", "transformer"):
            d = pd["systems"][system]
            assert d["train"]["updates"] >= 3 and d["train"]["wps"] > 0 and d["train"]["wps_spread"]["n"] >= 2
            for split in ("valid", "test"):
                assert d[split]["sentences"] == 24 and d[split]["sacrebleu_signature"].startswith("nrefs:1")
        assert pd["ratios"]["wps"] > 0 and pd["ratios"]["test_bleu_diff"] is not None
        assert f"## {pair}:" in md
    assert report["pairs"]["base"]["systems"]["resmlp"]["train"]["parameters"] < 1e6  # the dry run's stand-in sizes
    checks = {c["name"]: c for c in report["checks"]}
    assert (
        checks["small.goal.test_bleu"]["status"] == "n/a"
        and checks["base.resmlp.train.fp16_overflow"]["status"] == "n/a"
    )
    assert "Vision on the GPU" in md and "ResMLP / Transformer: words/s" in md
    for path in (str(tmp_path), str(REPO), str(multi30k_dir), sys.executable):
        assert path not in text and path not in md, path
