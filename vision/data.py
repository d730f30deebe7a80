"""Image data: ImageFolder trees, transforms (DeiT recipe and a light CPU recipe), loaders.

Any ``root/<class>/<image>`` tree works (ImageNet layout). Bad input is reported by name:

* files without an image extension (``notes.txt``) are ignored, with one warning listing them;
* a file with an image extension that does not decode is, by default, an error naming the
  file (``bad_images="error"``); with ``bad_images="skip"`` it is skipped with a warning
  naming it. With ``check_readable=True`` (evaluation) or ``cache="memory"`` every file is
  decoded once up front and the unreadable ones are left out of the dataset (``skipped``
  lists them), so nothing is counted twice; otherwise (training) the next readable image of
  the dataset is used in its place, so a batch keeps its size;
* any readable image works, however small (a 1x1 image is scaled up to the crop size).
* training and validation trees with different class folders are an error listing the
  classes found in only one of them.

``cache="memory"`` decodes every image once into RAM (uint8), for small datasets such as
CIFAR-10 (50k 32x32 images = 150 MB), so that no epoch decodes JPEGs again.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

_logger = logging.getLogger(__name__)


class BadImageError(ValueError):
    """An image file of a dataset that cannot be read; the message names the file."""


def error_line(err: BaseException) -> str:
    """The one line a command prints for a bad-input error (``error: <this>``). An error raised in
    a DataLoader worker comes back with the worker's traceback in its message (``Caught
    BadImageError in DataLoader worker process 0. Original Traceback ...``): its last line, the
    original message, is what names the file."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]  # "vision.data.BadImageError: cannot read image ..."
        name, sep, message = last.partition(": ")
        return message if sep and " " not in name else last
    return " ".join(text.splitlines()) or type(err).__name__


def find_classes(root: Path) -> list[str]:
    """Class names: the sub-folders of ``root``, sorted (torchvision's ImageFolder order)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"dataset folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    return classes


def check_same_classes(train_classes: Sequence[str], val_classes: Sequence[str], train_root: Path,
                       val_root: Path) -> None:
    """Raise ``ValueError`` unless both trees have the same class folders."""
    if list(train_classes) == list(val_classes):
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    raise ValueError(
        f"training classes ({train_root}, {len(train_classes)}) and validation classes ({val_root}, "
        f"{len(val_classes)}) differ: only in training: {only_train or 'none'}; "
        f"only in validation: {only_val or 'none'}"
    )


def _load_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"cannot read image {path}: {err}") from err


class ImageFolderDataset(Dataset):
    """An ImageFolder tree as ``(image, label)`` pairs.

    Args:
        root: folder holding one sub-folder per class.
        transform: applied to the PIL RGB image.
        classes: the class list to use (e.g. the training classes for a validation set);
            default: the sub-folders of ``root``. A listed class without a folder is an error.
        cache: ``"none"`` (decode on access) or ``"memory"`` (decode everything once, uint8).
        bad_images: ``"error"`` (raise :class:`BadImageError` naming the file) or ``"skip"``
            (warn naming the file and leave it out, see ``check_readable``).
        max_per_class: keep the first ``k`` files of each class (sorted by name), for quick runs.
        cache_threads: decoding threads for ``cache="memory"`` and ``check_readable``.
        check_readable: with ``bad_images="skip"``, decode every file once now and leave the
            unreadable ones out of the dataset, so that every index is a distinct readable
            image (for evaluation: exact counts). Without it, an unreadable file found later is
            replaced by the next readable image (training: batches keep their size).

    ``skipped``: the unreadable files left out (``check_readable`` or ``cache="memory"``).

    Items: ``(transform(image), label)`` with ``label`` an int in ``[0, len(classes))``.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Optional[Callable] = None,
        classes: Optional[Sequence[str]] = None,
        cache: str = "none",
        bad_images: str = "error",
        max_per_class: Optional[int] = None,
        cache_threads: int = 2,
        check_readable: bool = False,
    ):
        if cache not in ("none", "memory"):
            raise ValueError(f"cache must be 'none' or 'memory', got {cache!r}")
        if bad_images not in ("error", "skip"):
            raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
        self.root = Path(root)
        self.transform = transform
        self.bad_images = bad_images
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = self._scan(max_per_class)
        self.targets = [label for _, label in self.samples]
        self._skipped: set[str] = set()
        self.skipped: list[str] = []
        self._images: Optional[np.ndarray | list[np.ndarray]] = None
        if cache == "memory":
            self._images = self._decode_all(cache_threads)
        elif check_readable and bad_images == "skip":
            self._drop_unreadable(cache_threads)

    def _scan(self, max_per_class: Optional[int]) -> list[tuple[str, int]]:
        samples, ignored = [], []
        for cls in self.classes:
            folder = self.root / cls
            if not folder.is_dir():
                raise FileNotFoundError(f"class folder {folder} does not exist")
            files = sorted(e.name for e in os.scandir(folder) if e.is_file())
            images = [f for f in files if f.lower().endswith(IMG_EXTENSIONS)]
            ignored += [str(folder / f) for f in files if not f.lower().endswith(IMG_EXTENSIONS)]
            if not images:
                raise FileNotFoundError(f"class folder {folder} holds no image files ({', '.join(IMG_EXTENSIONS)})")
            if max_per_class:
                images = images[:max_per_class]
            samples += [(str(folder / f), self.class_to_idx[cls]) for f in images]
        if ignored:
            shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
            warnings.warn(f"{self.root}: ignored {len(ignored)} file(s) without an image extension: {shown}",
                          stacklevel=3)
        return samples

    def _decode_all(self, threads: int) -> np.ndarray | list[np.ndarray]:
        def decode(path: str) -> np.ndarray | BadImageError:
            try:
                return np.asarray(_load_rgb(path))
            except BadImageError as err:
                if self.bad_images == "error":
                    raise
                return err

        with ThreadPoolExecutor(max(1, threads)) as pool:
            arrays = list(pool.map(decode, (p for p, _ in self.samples), chunksize=256))
        arrays = self._keep_readable(arrays)
        if len({a.shape for a in arrays}) == 1:
            return np.stack(arrays)  # one block: cheap to share with forked loader workers
        return arrays

    def _drop_unreadable(self, threads: int) -> None:
        def check(path: str) -> Optional[BadImageError]:
            try:
                _load_rgb(path)
            except BadImageError as err:
                return err
            return None

        with ThreadPoolExecutor(max(1, threads)) as pool:
            results = list(pool.map(check, (p for p, _ in self.samples), chunksize=64))
        self._keep_readable(results)

    def _keep_readable(self, results: list) -> list:
        """Drop the samples whose entry in ``results`` is a :class:`BadImageError` (one warning
        naming them, ``self.skipped``); the other entries, in order."""
        bad = [i for i, r in enumerate(results) if isinstance(r, BadImageError)]
        if bad:
            self.skipped = [self.samples[i][0] for i in bad]
            self._skipped.update(self.skipped)
            shown = "; ".join(str(results[i]) for i in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
            warnings.warn(f"skipping {len(bad)} unreadable image file(s) of {self.root}: {shown}", stacklevel=4)
        drop = set(bad)
        self.samples = [s for i, s in enumerate(self.samples) if i not in drop]
        self.targets = [label for _, label in self.samples]
        if not self.samples:
            raise BadImageError(f"no readable image in {self.root} ({len(bad)} unreadable file(s))")
        return [r for i, r in enumerate(results) if i not in drop]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        """The RGB image at ``index`` (before the transform)."""
        if self._images is not None:
            return Image.fromarray(self._images[index])
        return _load_rgb(self.samples[index][0])

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            try:
                img = self.load(i)
            except BadImageError as err:
                if self.bad_images == "error":
                    raise
                if self.samples[i][0] not in self._skipped:
                    self._skipped.add(self.samples[i][0])
                    warnings.warn(f"skipping {err}", stacklevel=2)
                continue
            label = self.samples[i][1]
            if self.transform is None:
                return img, label
            try:
                return self.transform(img), label
            except Exception as err:  # name the file: the transform's own message does not
                raise RuntimeError(f"the transform failed on image {self.samples[i][0]} ({img.width}x{img.height}): "
                                   f"{type(err).__name__}: {err}") from err
        raise BadImageError(f"no readable image in {self.root}")


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------


def build_eval_transform(
    img_size: int,
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Callable:
    """Resize the short side to ``floor(img_size / crop_pct)`` then centre-crop ``img_size``
    (ResMLP: crop 0.9, bicubic, so 248 -> 224), to tensor, normalise. timm's eval transform."""
    from timm.data import create_transform

    return create_transform(
        img_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct, mean=tuple(mean), std=tuple(std)
    )


def _posterize_keep_zero_bits(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with Pillow < 13's meaning of 0 bits (a black image).

    RandAugment ``m9-mstd0.5-inc1`` draws magnitudes up to 10, where PosterizeIncreasing keeps
    0 bits; Pillow 13 raises for that ("bits must be between or equal to 1 and 8"), Pillow 8-12
    (DeiT's time) returned black. timm 1.0.31 passes 0 through.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    from PIL import ImageOps

    return ImageOps.posterize(img, bits_to_keep)


def _install_posterize_compat() -> None:
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if auto_augment.NAME_TO_OP.get(name) is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize_keep_zero_bits


class AtLeastSize:
    """Scale an image up, keeping its aspect ratio, until both sides are at least ``size``; an
    image that is already large enough is returned as it is (so CIFAR's 32x32 images stay
    bit-identical at ``size=32``). Lets pad-and-crop take a ``size`` crop of any image."""

    def __init__(self, size: int, interpolation: str = "bicubic"):
        from timm.data.transforms import str_to_pil_interp

        self.size = size
        self.interpolation = interpolation
        self._resample = str_to_pil_interp(interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if min(w, h) >= self.size:
            return img
        scale = self.size / max(1, min(w, h))
        return img.resize((max(self.size, math.ceil(w * scale)), max(self.size, math.ceil(h * scale))), self._resample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, interpolation={self.interpolation})"


def build_train_transform(
    img_size: int,
    train_crop: str = "rrc",
    pad: int = 4,
    hflip: float = 0.5,
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.3,
    interpolation: str = "bicubic",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Callable:
    """Training augmentation.

    * ``train_crop="rrc"``: the DeiT recipe, timm's ``create_transform(is_training=True)``:
      RandomResizedCrop, flip, RandAugment (``auto_augment``), colour jitter (ignored by timm
      when RandAugment is on), random erasing.
    * ``train_crop="pad"``: for small images (CIFAR): reflect-pad by ``pad`` pixels and take a
      random ``img_size`` crop, flip, then the same optional RandAugment and random erasing
      (timm's implementations). An image smaller than ``img_size`` (even 1x1) is first scaled
      up to at least ``img_size`` on each side (:class:`AtLeastSize`); others are untouched.
    """
    from timm.data import create_transform
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import str_to_pil_interp

    if auto_augment:
        _install_posterize_compat()
    if train_crop == "rrc":
        return create_transform(
            img_size,
            is_training=True,
            hflip=hflip,
            color_jitter=color_jitter,
            auto_augment=auto_augment or None,
            interpolation=interpolation,
            re_prob=re_prob,
            re_mode=re_mode,
            re_count=re_count,
            mean=tuple(mean),
            std=tuple(std),
        )
    if train_crop != "pad":
        raise ValueError(f"train_crop must be 'rrc' or 'pad', got {train_crop!r}")
    tfl: list[Callable] = [
        AtLeastSize(img_size, interpolation),  # a smaller image (even 1x1) is scaled up first; others are untouched
        T.RandomCrop(img_size, padding=pad, padding_mode="reflect") if pad else T.CenterCrop(img_size),
    ]
    if hflip > 0:
        tfl.append(T.RandomHorizontalFlip(hflip))
    if auto_augment:
        hparams = dict(
            translate_const=int(img_size * 0.45),
            img_mean=tuple(round(255 * x) for x in mean),
            interpolation=str_to_pil_interp(interpolation),
        )
        tfl.append(rand_augment_transform(auto_augment, hparams))
    tfl += [T.ToTensor(), T.Normalize(mean, std)]
    if re_prob > 0:
        tfl.append(RandomErasing(re_prob, mode=re_mode, max_count=re_count, device="cpu"))
    return T.Compose(tfl)


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...`` in order, without padding: every sample is
    evaluated exactly once across ranks (DistributedSampler pads with duplicates)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_train_sampler(dataset: Dataset, repeated_aug: int, rank: int, world_size: int, seed: int):
    """A sampler whose order depends only on ``(seed, epoch)``: call ``set_epoch`` each epoch.

    ``repeated_aug > 1``: DeiT's repeated augmentation (timm's ``RepeatAugSampler``), each
    image ``repeated_aug`` times per epoch across the processes; otherwise a shuffling
    ``DistributedSampler`` (also with one process, for its deterministic per-epoch order).
    """
    if repeated_aug > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        return RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, num_repeats=repeated_aug)
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                               drop_last=True)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of ``num_samples`` (per process), last partial batch dropped."""
    return max(1, math.floor(num_samples / batch_size))
