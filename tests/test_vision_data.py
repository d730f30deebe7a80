"""The vision data layer on real images: the ImageNet eval transform and every model on real
photographs, CIFAR-10 reading and caching, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as T

import vision
from vision.data import (
    BadImageError,
    ImageFolderDataset,
    build_eval_transform,
    build_train_transform,
    check_same_classes,
    find_classes,
)
from vision.reference import timm_reference

from helpers import link_images

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cifar_slice(cifar10_dir: Path, dest: Path, split: str = "test", per_class: int = 3, classes=None) -> Path:
    """A tiny ImageFolder of symlinks to real CIFAR-10 images."""
    return link_images(cifar10_dir / split, dest, per_class, classes)


def test_imagenet_eval_transform_is_resize_248_center_crop_224_bicubic(imagenet_sample_dir):
    path = next(iter(sorted((imagenet_sample_dir / "val").rglob("*.JPEG"))))
    img = Image.open(path).convert("RGB")
    tf = build_eval_transform(224, crop_pct=0.9, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    # by hand: short side to floor(224 / 0.9) = 248 with bicubic, centre 224 crop
    w, h = img.size
    manual = T.Compose([T.Resize(248, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    out = tf(img)
    assert out.shape == (3, 224, 224)
    assert min(w, h) != 248  # a real resize happened
    torch.testing.assert_close(out, manual(img), atol=1e-5, rtol=0)
    assert math.floor(224 / 0.9) == 248


@pytest.mark.slow
def test_every_model_runs_on_real_photographs_at_224(imagenet_sample_dir):
    tf = build_eval_transform(224, 0.9, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    data = ImageFolderDataset(imagenet_sample_dir / "val", tf)
    assert len(data) == 50 and len(data.classes) == 50
    x = torch.stack([data[i][0] for i in (0, 17, 42)])
    for name in vision.MODEL_NAMES:
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        with torch.no_grad():
            logits = model(x)
            assert logits.shape == (3, 1000) and torch.isfinite(logits).all(), name
            if name == "resmlp_s12":  # on real photographs too: timm's implementation and the folded model agree
                assert (timm_reference(model)(x) - logits).abs().max() <= 1e-5
                from timm.utils import reparameterize_model

                assert (reparameterize_model(model)(x) - logits).abs().max() <= 1e-5 * logits.abs().max()


def test_cifar10_folder_reads_real_images_and_memory_cache_matches(cifar10_dir, tmp_path):
    root = cifar_slice(cifar10_dir, tmp_path / "c10", per_class=2)
    plain = ImageFolderDataset(root, T.ToTensor())
    cached = ImageFolderDataset(root, T.ToTensor(), cache="memory")
    assert plain.classes == find_classes(cifar10_dir / "test") and len(plain) == 20
    assert isinstance(cached._images, __import__("numpy").ndarray) and cached._images.shape == (20, 32, 32, 3)
    for i in range(0, 20, 3):
        (a, la), (b, lb) = plain[i], cached[i]
        assert la == lb == i // 2
        assert a.shape == (3, 32, 32)
        torch.testing.assert_close(a, b)


def test_cifar_train_transform_pad_crop_and_rand_augment(cifar10_dir, tmp_path):
    root = cifar_slice(cifar10_dir, tmp_path / "c10", per_class=1)
    tf = build_train_transform(32, train_crop="pad", auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    data = ImageFolderDataset(root, tf)
    torch.manual_seed(0)
    for _ in range(5):
        for i in range(len(data)):
            x, _ = data[i]
            assert x.shape == (3, 32, 32)
    # m9 with mstd 0.5 draws magnitudes up to 10, where PosterizeIncreasing keeps 0 bits: Pillow 13
    # raises for that, Pillow <= 12 (the recipe's time) gave a black image, and so do we
    from timm.data.auto_augment import AugmentOp

    img = data.load(0)
    black = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(img)
    assert black.size == img.size and black.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_unreadable_image_is_named_or_skipped(cifar10_dir, tmp_path):
    root = cifar_slice(cifar10_dir, tmp_path / "c10", per_class=2, classes=["cat", "dog"])
    bad = root / "cat" / "zz_broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"ignored 1 file\(s\) without an image extension: .*notes\.txt"):
        data = ImageFolderDataset(root, T.ToTensor())
    assert len(data) == 5
    (root / "dog" / "notes.txt").unlink()
    index = [p for p, _ in data.samples].index(str(bad))
    with pytest.raises(BadImageError, match=r"cannot read image .*zz_broken\.jpg"):
        data[index]
    with pytest.warns(UserWarning, match=r"skipping cannot read image .*zz_broken\.jpg"):
        skipping = ImageFolderDataset(root, T.ToTensor(), bad_images="skip")
        x, label = skipping[index]
    assert x.shape == (3, 32, 32) and label == 1  # the next readable image (a dog)
    with pytest.raises(BadImageError, match="zz_broken"):
        ImageFolderDataset(root, T.ToTensor(), cache="memory")
    with pytest.warns(UserWarning, match="zz_broken"):
        cached = ImageFolderDataset(root, T.ToTensor(), cache="memory", bad_images="skip")
    assert len(cached) == 4


def test_class_folders_that_differ_are_an_error(tmp_path):
    for split, classes in (("train", ["cat", "dog", "emu"]), ("val", ["cat", "dog", "fox"])):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"only in training: \['emu'\]; only in validation: \['fox'\]"):
        check_same_classes(find_classes(tmp_path / "train"), find_classes(tmp_path / "val"), tmp_path / "train",
                           tmp_path / "val")
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        ImageFolderDataset(tmp_path / "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_classes(tmp_path / "missing")
