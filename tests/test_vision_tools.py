"""Configs, the evaluation CLI, the cross-patch plot and the benchmark's quick mode."""

from __future__ import annotations

import json
import sys

import pytest
import timm
import torch
import yaml
from PIL import Image

import vision  # noqa: F401
from vision.config import CONFIG_DIR, available_configs, load_config
from vision.plot import cross_patch_montage
from vision.train import build_parser

from helpers import FAST, TINY_MODEL, make_slice
from helpers import run_module as run_train


def test_every_config_uses_known_options_and_imagenet_configs_follow_the_paper():
    parser = build_parser()
    names = available_configs()
    assert {"imagenet_s12", "imagenet_s24", "imagenet_s36", "imagenet_b24", "imagenet_s12_p8", "imagenet_b24_p8",
            "cifar10_cpu"} <= set(names)
    for name in names:
        if name.startswith("dino_"):  # vision.dino's options (tests/test_vision_dino.py)
            continue
        cfg = load_config(name, parser)
        if name.startswith("imagenet_"):
            model = cfg["model"]
            assert timm.is_model(model)
            paper = dict(opt="lamb", lr=5e-3, weight_decay=0.2, epochs=400, warmup_epochs=5, smoothing=0.1,
                         repeated_aug=3, aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, crop_pct=0.9,
                         interpolation="bicubic", img_size=224)
            assert {k: cfg[k] for k in paper} == paper, name
            assert cfg["batch_size"] * 8 == 2048
    s12 = load_config("imagenet_s12", parser)
    assert s12["drop_path"] == 0.05 and s12["model"] == "resmlp_s12"
    # a config sets defaults; the command line still wins
    args = parser.parse_args(["--lr", "0.1"]) if False else None  # noqa: F841
    from vision.config import parse_with_config

    args = parse_with_config(build_parser(), ["--config", "imagenet_s24", "--lr", "0.1", "--data-dir", "x"])
    assert args.model == "resmlp_s24" and args.lr == 0.1 and args.weight_decay == 0.2
    assert (CONFIG_DIR / "cifar10_cpu.yaml").is_file()


def test_cross_patch_montage_puts_row_i_at_patch_i():
    h, w = 2, 3
    weight = torch.zeros(h * w, h * w)
    weight[4, 1] = 1.0  # patch 4 = grid (1, 1) looks at patch 1 = grid (0, 1)
    img = cross_patch_montage(weight, (h, w))
    assert img.shape == (h * h, w * w)
    tile = img[1 * h : 2 * h, 1 * w : 2 * w]  # the tile of patch (1, 1)
    assert tile[0, 1] == 1.0 and img.sum() == 1.0
    with pytest.raises(ValueError, match="does not fit a 2x3 patch grid"):
        cross_patch_montage(torch.zeros(5, 5), (2, 3))


@pytest.mark.slow
def test_evaluate_and_plot_a_trained_checkpoint(cifar10_dir, tmp_path):
    data = make_slice(cifar10_dir, tmp_path / "data", 6, 3)
    run_train(*TINY_MODEL, *FAST, "--data-dir", str(data), "--val-split", "test", "--epochs", "1",
              "--output", str(tmp_path / "run"))
    ckpt = tmp_path / "run" / "last.pth"
    proc = run_train("--checkpoint", str(ckpt), "--data-dir", str(data / "test"), "--workers", "0",
                     "--bench-batch", "4", "--bench-rounds", "1", "--out", str(tmp_path / "eval.json"),
                     module="vision.evaluate")
    report = json.loads((tmp_path / "eval.json").read_text())
    acc = report["accuracy"]
    assert report["images"] == 30 and acc["ours"]["count"] == 30
    assert acc["ours"]["top1"] == acc["timm"]["top1"] == acc["ours_folded"]["top1"]  # three forms of the same weights
    assert abs(acc["ours"]["loss"] - acc["ours_folded"]["loss"]) < 1e-4
    trained = torch.load(ckpt, weights_only=True)["metrics"]
    assert acc["ours"]["top1"] == pytest.approx(trained["top1"])  # the CLI and the training loop agree
    assert set(report["throughput_img_per_s"]) == {"ours", "timm", "ours_folded"}
    assert "speed vs timm's implementation" in proc.stdout
    # classes that differ from the checkpoint's
    other = make_slice(cifar10_dir, tmp_path / "other", 1, 1)
    (other / "test" / "truck").rename(other / "test" / "lorry")
    bad = run_train("--checkpoint", str(ckpt), "--data-dir", str(other / "test"), "--bench-batch", "0",
                    module="vision.evaluate", check=False)
    assert bad.returncode == 2 and "only in validation: ['lorry']" in bad.stderr
    # the published summary of the run
    run_train("--name", "vision_test", "--run", f"tiny={tmp_path / 'run'}", "--command", "test",
              "--results-dir", str(tmp_path / "results"), module="benchmarks.vision_report")
    summary = json.loads((tmp_path / "results" / "vision_test.json").read_text())
    assert (summary["runs"]["tiny"]["final"]["top1"] == pytest.approx(trained["top1"])
            and summary["runs"]["tiny"]["epochs"] == 1)
    assert "| tiny | resmlp_s12 (" in (tmp_path / "results" / "vision_test.md").read_text()
    # the plot
    png = tmp_path / "cross_patch.png"
    run_train("--checkpoint", str(ckpt), "--out", str(png), module="vision.plot")
    with Image.open(png) as img:
        assert img.size[0] > 200 and img.size[1] > 150


@pytest.mark.slow
def test_bench_quick_mode_writes_json_and_markdown(tmp_path):
    proc = run_train("--quick", "--sizes", "S12", "--device", "cpu", "--out", str(tmp_path / "bench"),
                     module="benchmarks.bench_vision")
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["settings"]["quick"] is True and report["matmul_gflops_fp32"] > 0
    res = report["results"]["S12"]
    assert res["max_abs_diff_ours_vs_timm"] < 1e-5 and res["max_abs_diff_folded_vs_ours"] < 1e-5
    assert set(res["inference"]["float32_batch1"]) == {"timm", "ours", "ours_folded"}
    assert "speedup_vs_timm" in res["train_step"]["float32_batch2"]["ours"]
    md = (tmp_path / "bench.md").read_text()
    machine = report["machine"]
    assert "| S12 | inference float32 batch1 |" in md
    assert f"device {machine['device']}" in md and (machine["gpu"] or "no GPU on this machine") in md
    assert "S12 train step" in proc.stdout
    _ = yaml, sys  # (imported for the config test above)
