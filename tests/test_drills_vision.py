"""Drills for the vision tools: a run killed between its end-of-epoch writes, tiny
images, unreadable images at evaluation, and files that are not checkpoints. Everything runs on
tiny images written into tmp_path and a tiny ResMLP (8x8 inputs), in-process, in seconds."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import vision  # noqa: F401  (registers the models)
from resmlp_core import io as safe_io
from vision import checkpoint as ckpt_io
from vision.data import ImageFolderDataset, build_eval_transform, build_train_transform
from helpers import DEAD_PID

TINY = ["--model", "resmlp_s12", "--img-size", "8", "--model-kwargs", "patch_size=4", "embed_dim=16", "depth=1"]
TINY_KWARGS = dict(num_classes=2, img_size=8, patch_size=4, embed_dim=16, depth=1)
FAST = ["--workers", "0", "--warmup-epochs", "1", "--lr", "2e-3", "--batch-size", "4", "--threads", "1",
        "--device", "cpu", "--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--repeated-aug", "0",
        "--train-crop", "pad", "--no-pin-mem"]


def write_images(root: Path, per_class: int, size=(8, 8), classes=("cat", "dog"), seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (torch.rand(size[1], size[0], 3, generator=gen) * 128 + 100 * c).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    data = tmp_path / "data"
    write_images(data / "train", 4)
    write_images(data / "val", 2, seed=1)
    return data


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, *FAST, "--data-dir", str(data), "--output", str(out), *extra]


def csv_epochs(path: Path) -> list[int]:
    with open(path, newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def assert_outputs_agree(out: Path) -> None:
    """best.pth, summary.csv and the log's last line say the same as last.pth; no temporaries."""
    last = torch.load(out / "last.pth", weights_only=True)
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["epoch"] == last["best"]["epoch"], (best["epoch"], last["best"])
    assert best["metrics"]["top1"] == last["best"]["top1"]
    assert csv_epochs(out / "summary.csv") == list(range(last["epoch"] + 1))
    done = [line for line in (out / "log.txt").read_text().splitlines() if "done: best top-1" in line][-1]
    assert f"at epoch {best['epoch']};" in done and f"top-1 {best['metrics']['top1']:.2f}" in done
    assert not list(out.glob(".*.tmp"))


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


# --------------------------------------------------------------------------------------
# 1. A kill between the end-of-epoch writes
# --------------------------------------------------------------------------------------


def test_kill_right_after_last_pth_is_repaired_on_resume(tiny_data, tmp_path, monkeypatch):
    from vision.train import main

    out = tmp_path / "run"
    real_save = safe_io.save_atomic

    def save_then_die(obj, path):
        real_save(obj, path)
        if Path(path).name == "last.pth" and obj["epoch"] == 0:
            raise Killed()

    monkeypatch.setattr(safe_io, "save_atomic", save_then_die)
    with pytest.raises(Killed):
        main(train_args(tiny_data, out, "--epochs", "1"))
    monkeypatch.setattr(safe_io, "save_atomic", real_save)
    assert torch.load(out / "last.pth", weights_only=True)["best"]["epoch"] == 0
    (out / f".last.pth.{DEAD_PID}.k1ll3d.tmp").write_bytes(b"")  # what a kill inside torch.save leaves
    # nothing left to train: the resume only has to put the folder right
    assert main(train_args(tiny_data, out, "--epochs", "1", "--resume", "auto")) == 0
    assert_outputs_agree(out)
    log = (out / "log.txt").read_text()
    assert "rewritten from" in log and "best.pth" in log and "deleted 1 temporary file(s)" in log
    # and the run goes on from there as usual
    assert main(train_args(tiny_data, out, "--epochs", "2", "--resume", "auto")) == 0
    assert_outputs_agree(out)
    assert csv_epochs(out / "summary.csv") == [0, 1]


def test_kill_before_last_pth_redoes_the_epoch(tiny_data, tmp_path, monkeypatch):
    from vision.train import main

    out = tmp_path / "run"
    real_save = safe_io.save_atomic

    def die_before_epoch_1(obj, path):
        if Path(path).name == "last.pth" and obj["epoch"] == 1:
            raise Killed()
        real_save(obj, path)

    monkeypatch.setattr(safe_io, "save_atomic", die_before_epoch_1)
    with pytest.raises(Killed):
        main(train_args(tiny_data, out, "--epochs", "2"))
    monkeypatch.setattr(safe_io, "save_atomic", real_save)
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 0
    assert main(train_args(tiny_data, out, "--epochs", "2", "--resume", "auto")) == 0
    assert_outputs_agree(out)
    assert csv_epochs(out / "summary.csv") == [0, 1]  # epoch 1's row of the killed run was dropped, then written again


def test_summary_row_and_checkpoints_are_written_in_a_safe_order(tiny_data, tmp_path, monkeypatch):
    """The CSV row goes first, then last.pth, then best.pth, each through a temporary file."""
    from vision import train

    order: list[str] = []
    real_write = safe_io.write_atomic

    def record(path, fill):
        order.append(Path(path).name)
        real_write(path, fill)

    monkeypatch.setattr(safe_io, "write_atomic", record)
    assert train.main(train_args(tiny_data, tmp_path / "run", "--epochs", "1")) == 0
    assert order[-3:] == ["summary.csv", "last.pth", "best.pth"], order


# --------------------------------------------------------------------------------------
# 2. Tiny images
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (1, 20), (20, 1), (3, 5)])
def test_any_readable_image_fits_every_transform(size):
    img = Image.new("RGB", size, (200, 10, 50))
    transforms = {
        "pad": build_train_transform(32, train_crop="pad", auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25),
        "pad0": build_train_transform(32, train_crop="pad", pad=0, auto_augment=None),
        "rrc": build_train_transform(32),
        "eval": build_eval_transform(32),
    }
    torch.manual_seed(0)
    for name, tf in transforms.items():
        for _ in range(3):
            assert tf(img).shape == (3, 32, 32), name


def test_pad_crop_leaves_images_of_the_crop_size_untouched():
    img = Image.fromarray((torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy())
    tf = build_train_transform(32, train_crop="pad", pad=0, hflip=0, auto_augment=None, re_prob=0, mean=(0, 0, 0),
                               std=(1, 1, 1))
    from torchvision.transforms.functional import to_tensor

    assert torch.equal(tf(img), to_tensor(img))


def test_training_with_a_1x1_image(tiny_data, tmp_path):
    from vision.train import main

    Image.new("RGB", (1, 1), (255, 0, 0)).save(tiny_data / "train" / "cat" / "tiny.png")
    Image.new("RGB", (1, 1), (0, 0, 255)).save(tiny_data / "val" / "dog" / "tiny.png")
    (tiny_data / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    # 1 + 2 * 2 pixels after padding: smaller than the 8-pixel crop, so the image must be scaled up
    assert main(train_args(tiny_data, out, "--epochs", "1", "--bad-images", "skip", "--batch-size", "2",
                           "--crop-pad", "2")) == 0
    assert torch.load(out / "last.pth", weights_only=True)["metrics"]["count"] == 5


# --------------------------------------------------------------------------------------
# 3. Unreadable images at evaluation
# --------------------------------------------------------------------------------------


def test_evaluate_skip_leaves_unreadable_files_out_of_every_count(tmp_path, capsys):
    from vision.evaluate import main

    clean = write_images(tmp_path / "clean", 5, seed=2)
    dirty = tmp_path / "dirty"
    shutil.copytree(clean, dirty)
    bad = [dirty / "cat" / "000_bad.png", dirty / "cat" / "001_bad.jpg", dirty / "dog" / "002_bad.png"]
    for path in bad:
        path.write_bytes(b"\x89PNG truncated")
    torch.manual_seed(0)
    model = timm.create_model("resmlp_s12", **TINY_KWARGS)
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    common = ["--model", "resmlp_s12", "--weights", str(weights),
              "--model-kwargs", *(f"{k}={v}" for k, v in TINY_KWARGS.items()),
              "--img-size", "8", "--workers", "0", "--bench-batch", "0", "--batch-size", "4", "--no-reference"]
    with pytest.warns(UserWarning, match=r"skipping .*_bad\."):
        assert main([*common, "--data-dir", str(dirty), "--bad-images", "skip",
                     "--out", str(tmp_path / "dirty.json")]) == 0
    stdout = capsys.readouterr().out
    assert "skipped 3 unreadable image file(s)" in stdout and all(str(p) in stdout for p in bad)
    assert main([*common, "--data-dir", str(clean), "--out", str(tmp_path / "clean.json")]) == 0
    got, want = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("dirty", "clean"))
    assert got["images"] == want["images"] == 10 and got["accuracy"]["ours"]["count"] == 10
    assert sorted(got["skipped_files"]) == sorted(map(str, bad)) and want["skipped_files"] == []
    for key in ("top1", "top5", "loss"):
        assert got["accuracy"]["ours"][key] == want["accuracy"]["ours"][key]


def test_dataset_check_readable_drops_unreadable_files(tmp_path):
    root = write_images(tmp_path / "d", 2)
    (root / "dog" / "zz.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image file\(s\) .*zz\.png"):
        data = ImageFolderDataset(root, bad_images="skip", check_readable=True)
    assert len(data) == 4 and data.skipped == [str(root / "dog" / "zz.png")] and data.targets == [0, 0, 1, 1]
    for path in root.glob("*/*.png"):
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="no readable image in"), pytest.warns(UserWarning):
        ImageFolderDataset(root, bad_images="skip", check_readable=True)


# --------------------------------------------------------------------------------------
# 4. Files that are not checkpoints
# --------------------------------------------------------------------------------------


def not_checkpoints(tmp_path: Path) -> dict[str, Path]:
    files = {
        "text": tmp_path / "notes.txt",
        "empty": tmp_path / "empty.pth",
        "string": tmp_path / "string.pth",
        "numbers": tmp_path / "numbers.pth",
        "truncated": tmp_path / "truncated.pth",
    }
    files["text"].write_text("these are not weights\n")
    files["empty"].write_bytes(b"")
    torch.save("a string", files["string"])
    torch.save({"epoch": 3, "lr": 0.1}, files["numbers"])
    torch.save(timm.create_model("resmlp_s12", **TINY_KWARGS).state_dict(), tmp_path / "good.pth")
    files["truncated"].write_bytes((tmp_path / "good.pth").read_bytes()[:-200])
    return files


EXPECTED = r"(PyTorch checkpoint|state dict).*ResMLP"


def test_timm_pretrained_file_that_is_not_a_checkpoint_names_it(tmp_path):
    for kind, path in not_checkpoints(tmp_path).items():
        with pytest.raises(ValueError) as info:
            timm.create_model("resmlp_s12", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY_KWARGS)
        msg = str(info.value)
        assert str(path) in msg and re.search(EXPECTED, msg), (kind, msg)
    # a good file still loads
    model = timm.create_model("resmlp_s12", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "good.pth")), **TINY_KWARGS)
    assert model.pretrained_cfg["file"] == str(tmp_path / "good.pth")


def test_vision_loaders_name_the_file_and_what_was_expected(tmp_path, capsys):
    from vision.evaluate import main as evaluate
    from vision.resmlp import checkpoint_filter_fn

    model = timm.create_model("resmlp_s12", **TINY_KWARGS)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    for kind, path in not_checkpoints(tmp_path).items():
        with pytest.raises(ValueError) as info:
            ckpt_io.load_weights(model, ckpt_io.state_dict_of(ckpt_io.load(path), what=f"checkpoint {path}"),
                                 what=f"checkpoint {path}")
        assert str(path) in str(info.value) and re.search(EXPECTED, str(info.value)), (kind, str(info.value))
        with pytest.raises(ValueError, match=re.escape(str(path))):
            ckpt_io.create_model_from_checkpoint(path)
        for flags in (["--checkpoint", str(path)], ["--model", "resmlp_s12", "--weights", str(path)]):
            assert evaluate([*flags, "--data-dir", str(tmp_path / "val")]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and str(path) in err and re.search(EXPECTED, err), (kind, flags, err)
    with pytest.raises(ValueError, match=EXPECTED):
        checkpoint_filter_fn(["not", "a", "state dict"], model)
    # a file that claims to be a vision.train checkpoint but lacks its parts
    partial = tmp_path / "partial.pth"
    torch.save({"format": ckpt_io.FORMAT, "model_name": "resmlp_s12"}, partial)
    with pytest.raises(ValueError, match=rf"{re.escape(str(partial))} .*lacks model_kwargs, model, data_config"):
        ckpt_io.create_model_from_checkpoint(partial)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_stays_weights_only(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": timm.create_model("resmlp_s12", **TINY_KWARGS).state_dict(), "payload": _Evil()}, path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        timm.create_model("resmlp_s12", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY_KWARGS)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        ckpt_io.load(path)
    assert "code ran" not in capsys.readouterr().out


def test_evaluate_on_an_unreadable_image_prints_one_line_naming_it(tmp_path, capsys):
    """Like vision.train: rc 2 and one ``error:`` line naming the file, no DataLoader traceback,
    also when the image is read in a worker process."""
    from vision.evaluate import main

    data = write_images(tmp_path / "data", 3)
    bad = data / "dog" / "001.png"
    bad.write_bytes(b"not an image")
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("resmlp_s12", **TINY_KWARGS).state_dict(), weights)
    common = ["--model", "resmlp_s12", "--weights", str(weights),
              "--model-kwargs", *(f"{k}={v}" for k, v in TINY_KWARGS.items()),
              "--img-size", "8", "--bench-batch", "0", "--batch-size", "2", "--no-reference", "--data-dir", str(data)]
    for workers in ("0", "1"):
        assert main([*common, "--workers", workers]) == 2, workers
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error" in line.lower()]  # besides the progress bar
        assert "Traceback" not in err and len(errors) == 1, (workers, err)
        assert errors[0].startswith(f"error: cannot read image {bad}"), (workers, err)


def test_features_cache_follows_the_image_files(tmp_path, monkeypatch, capsys):
    """--features-cache: removing, adding or rewriting images of a split gives the counts and
    accuracy of a run without the cache, never the old features."""
    from vision.knn import main as knn_main

    data = tmp_path / "data"
    write_images(data / "train", 6, seed=1)
    write_images(data / "val", 3, seed=2)
    weights = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("resmlp_s12", **{**TINY_KWARGS, "num_classes": 0}).state_dict(), weights)
    common = [*TINY[:4], "--model-kwargs", "patch_size=4", "embed_dim=16", "depth=1", "img_size=8",
              "--weights", str(weights), "--data-dir", str(data), "--workers", "0", "--threads", "1", "--k", "3"]

    def knn(name, cache=True):
        out = tmp_path / name
        assert knn_main([*common, *(["--features-cache", str(tmp_path / "f.pt")] if cache else []),
                         "--out", str(out)]) == 0
        report = json.loads(out.with_suffix(".json").read_text())
        return report["data"]["train_images"], report["data"]["val_images"], report["results"]

    assert knn("first") == knn("fresh0", cache=False)
    capsys.readouterr()
    knn("unchanged")
    assert f"from {tmp_path / 'f.pt'}" in capsys.readouterr().out  # an unchanged folder is served from the cache
    for path in sorted((data / "train" / "cat").iterdir())[:4]:
        path.unlink()  # 4 training images fewer
    assert knn("removed") == knn("fresh1", cache=False)
    write_images(data / "val", 6, classes=("cat",), seed=3)  # rewrites 3 cat images, adds 3
    assert knn("added") == knn("fresh2", cache=False)
    shutil.rmtree(data / "train" / "dog")
    write_images(data / "train", 6, classes=("dog",), size=(9, 9), seed=4)  # the same names, other images
    assert knn("replaced") == knn("fresh3", cache=False)
