"""The training CLI (`python -m vision.train`) on tiny slices of real CIFAR-10: exact resume,
distillation, DDP with two CPU processes, non-finite loss, bad input; the distillation loss."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vision.losses import DistillationLoss

from helpers import FAST, TINY_MODEL, make_slice
from helpers import run_module as run_train


@pytest.fixture(scope="module")
def tiny_cifar(cifar10_dir, tmp_path_factory) -> Path:
    return make_slice(cifar10_dir, tmp_path_factory.mktemp("cifar_slice"))


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------


class _Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_distillation_loss_matches_deit_formulas():
    torch.manual_seed(0)
    y, t = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.randint(0, 5, (6,))
    ce = torch.nn.CrossEntropyLoss()
    x = torch.zeros(6, 3, 2, 2)
    assert torch.equal(DistillationLoss(ce, None, "none")(x, y, labels), ce(y, labels))
    hard = DistillationLoss(ce, _Fixed(t), "hard", alpha=0.5)(x, y, labels)
    torch.testing.assert_close(hard, 0.5 * ce(y, labels) + 0.5 * F.cross_entropy(y, t.argmax(1)))
    tau = 3.0
    soft = DistillationLoss(ce, _Fixed(t), "soft", alpha=0.25, tau=tau)(x, y, labels)
    p_t = F.softmax(t / tau, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(y / tau, 1))).sum() * tau * tau / y.numel()
    torch.testing.assert_close(soft, 0.75 * ce(y, labels) + 0.25 * kl)
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationLoss(ce, None, "hard")


# --------------------------------------------------------------------------------------
# CLI runs
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_continues_exactly(tiny_cifar, tmp_path):
    """2 epochs in one go == 1 epoch, stop, --resume auto, 1 more: same weights, EMA, optimizer,
    CSV; with RandAugment, Mixup/CutMix, random erasing, drop path, EMA and a loader worker."""
    common = [*TINY_MODEL, *FAST, "--data-dir", str(tiny_cifar), "--val-split", "test", "--epochs", "2",
              "--workers", "1", "--model-ema", "--model-ema-decay", "0.9", "--sched-on-updates", "--repeated-aug", "0",
              "--train-crop", "pad"]
    run_train(*common, "--output", str(tmp_path / "a"))
    first = run_train(*common, "--output", str(tmp_path / "b"), "--stop-after-epoch", "0")
    assert "epoch 0:" in first.stdout and "epoch 1:" not in first.stdout
    assert torch.load(tmp_path / "b" / "last.pth", weights_only=True)["epoch"] == 0
    second = run_train(*common, "--output", str(tmp_path / "b"), "--resume", "auto")
    assert "resumed from" in second.stdout and "epoch 0:" not in second.stdout
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["num_updates"] == b["num_updates"] == 10
    for key in ("model", "model_ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    rows_a, rows_b = read_csv(tmp_path / "a" / "summary.csv"), read_csv(tmp_path / "b" / "summary.csv")
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):
        assert ra["train_loss"] == rb["train_loss"] and ra["eval_top1"] == rb["eval_top1"] and ra["lr"] == rb["lr"]
    assert (tmp_path / "a" / "best.pth").is_file() and (tmp_path / "a" / "args.yaml").is_file()


@pytest.mark.slow
def test_distillation_with_a_teacher_trained_by_the_cli(tiny_cifar, tmp_path):
    base = ["--data-dir", str(tiny_cifar), "--val-split", "test", *FAST, "--epochs", "1", "--mixup", "0",
            "--cutmix", "0", "--aa", "none", "--reprob", "0", "--repeated-aug", "0"]
    run_train("--model", "resnet10t", "--img-size", "32", *base, "--output", str(tmp_path / "teacher"))
    teacher = tmp_path / "teacher" / "last.pth"
    hard = run_train(*TINY_MODEL, *base, "--output", str(tmp_path / "hard"), "--distillation-type", "hard",
                     "--teacher-path", str(teacher))
    soft = run_train(*TINY_MODEL, *base, "--output", str(tmp_path / "soft"), "--distillation-type", "soft",
                     "--distillation-tau", "2", "--teacher-model", "resnet10t", "--teacher-path", str(teacher))
    none = run_train(*TINY_MODEL, *base, "--output", str(tmp_path / "none"))
    losses = {k: float(read_csv(tmp_path / k / "summary.csv")[0]["train_loss"]) for k in ("hard", "soft", "none")}
    assert len(set(losses.values())) == 3, losses  # the teacher term changes the loss
    assert ("distillation: hard" in hard.stdout and "distillation: soft" in soft.stdout
            and "distillation: " not in none.stdout)
    missing = run_train(*TINY_MODEL, *base, "--output", str(tmp_path / "x"), "--distillation-type", "hard", check=False)
    assert missing.returncode == 2 and "needs --teacher-path" in missing.stdout


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tiny_cifar, tmp_path):
    out = tmp_path / "ddp"
    proc = run_train(
        *TINY_MODEL, *FAST, "--data-dir", str(tiny_cifar), "--val-split", "test", "--epochs", "1", "--output", str(out),
        "--repeated-aug", "3",
        launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"],
    )
    assert "2 process(es) on cpu" in proc.stdout
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["args"]["batch_size"] == 16 and len(state["rng"]) == 2  # one generator state per rank
    assert state["metrics"]["count"] == 40  # every validation image once, split over the two ranks
    assert "lr 0.002 (global batch 32" in proc.stdout


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_cifar, tmp_path):
    out = tmp_path / "nan"
    args = [*TINY_MODEL, *FAST, "--data-dir", str(tiny_cifar), "--val-split", "test", "--epochs", "3",
            "--output", str(out), "--opt", "sgd", "--lr", "1e30", "--warmup-lr", "1e-6", "--mixup", "0",
            "--cutmix", "0", "--no-sched-on-updates"]
    proc = run_train(*args, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "loss is nan at epoch 1" in proc.stdout or "loss is inf at epoch 1" in proc.stdout
    assert f"the last good checkpoint is {out / 'last.pth'}" in proc.stdout
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert len(read_csv(out / "summary.csv")) == 1


def test_bad_input_gives_clear_errors(tmp_path, capsys, cifar10_dir):
    from vision.train import main

    data = make_slice(cifar10_dir, tmp_path / "data", 2, 1)
    with pytest.raises(SystemExit) as info:
        main(["--model", "resmlp_s13", "--data-dir", str(data), "--output", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'resmlp_s13'" in err and "did you mean" in err and "resmlp_s12" in err
    # class folders that differ
    (data / "test" / "unicorn").mkdir()
    (data / "test" / "unicorn" / "x.jpg").symlink_to(next((data / "test" / "cat").iterdir()).resolve())
    code = main([*TINY_MODEL, *FAST, "--data-dir", str(data), "--val-split", "test", "--output", str(tmp_path / "o")])
    assert code == 2 and "only in validation: ['unicorn']" in capsys.readouterr().out
    (data / "test" / "unicorn" / "x.jpg").unlink()
    (data / "test" / "unicorn").rmdir()
    # weights of another architecture
    import timm

    import vision  # noqa: F401

    other = timm.create_model("resmlp_s12", num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=3)
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    code = main([*TINY_MODEL, *FAST, "--data-dir", str(data), "--val-split", "test", "--output", str(tmp_path / "o"),
                 "--initial-checkpoint", str(tmp_path / "other.pth")])
    out = capsys.readouterr().out
    assert code == 2 and "does not fit resmlp_s12" in out and "unexpected keys (12): blocks.2.linear_tokens.bias" in out
    # a config key that is not an option
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("model: resmlp_s12\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        main(["--config", str(bad_cfg), "--data-dir", str(data), "--output", str(tmp_path / "o")])
    assert "unknown option(s) learning_rate" in capsys.readouterr().err
