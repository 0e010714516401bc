"""A train/<class>/* + test/<class>/* tree of PNG or JPEG images, decoded once and cached."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from runner.core.loader import DataError, Splits
from runner.data.cifar10 import CLASSES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_NAME = ".runner_cache_v1.pt"


def load_image_folder(root: str | Path, cache: bool = True) -> Splits:
    """Read root/train/<class>/*.{png,jpg,jpeg} (train) and root/test/<class>/* (val).

    Classes are the train subfolders sorted by name, or CIFAR-10's order if they are exactly its
    names. Images are decoded once and cached as one file (root/.runner_cache_v1.pt, else the user
    cache dir), keyed by a fingerprint of file names, sizes and mtimes; a changed folder is re-read.
    """
    root = Path(root).expanduser()
    files = {s: _list_split(root, s) for s in ("train", "test")}
    names = sorted({f[0] for f in files["train"]})
    classes = CLASSES if set(names) == set(CLASSES) else tuple(names)
    extra = sorted({f[0] for f in files["test"]} - set(classes))
    if extra:
        raise DataError(
            f"{root / 'test'} has class folders {extra} that {root / 'train'} lacks; "
            f"both must hold the same class folders."
        )
    stats = [
        (s, c, os.path.basename(p), size, mtime) for s in files for c, p, size, mtime in files[s]
    ]
    fingerprint = hashlib.sha256(repr((classes, stats)).encode()).hexdigest()
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    # 2nd: root read-only
    caches = [
        root / CACHE_NAME,
        _user_cache_dir() / f"image_folder_{key}.pt",
    ]
    if cache:
        for path in caches:
            try:
                d = torch.load(path, weights_only=True)
                if d["fingerprint"] == fingerprint:
                    return Splits(
                        d["train_x"], d["train_y"], d["val_x"], d["val_y"], tuple(d["classes"])
                    )
            except Exception:  # absent, stale format or damaged cache: decode again
                pass
    index = {c: i for i, c in enumerate(classes)}
    (tx, ty), (vx, vy) = [_decode_all(files[s], index) for s in ("train", "test")]
    if tx.shape[1:] != vx.shape[1:]:
        raise DataError(
            f"Images in {root / 'train'} are {tuple(tx.shape[2:])} but those in "
            f"{root / 'test'} are {tuple(vx.shape[2:])}; all images must share one size."
        )
    splits = Splits(tx, ty, vx, vy, classes)
    if cache:
        _save_cache(
            caches,
            dict(
                fingerprint=fingerprint,
                train_x=tx,
                train_y=ty,
                val_x=vx,
                val_y=vy,
                classes=list(classes),
            ),
        )
    return splits


def load_test_split(root: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """root/test/<class>/* alone (runner.evaluate: no training images needed): the uint8 images,
    their labels, the class folders in label order (sorted by name) and each image's path, in
    the order load_image_folder reads them. Not cached."""
    files = _list_split(Path(root).expanduser(), "test")
    classes = sorted({f[0] for f in files})
    x, y = _decode_all(files, {c: i for i, c in enumerate(classes)})
    return x, y, classes, [f[1] for f in files]


def _list_split(root: Path, split: str) -> list[tuple[str, str, int, int]]:
    """(class, path, size, mtime_ns) of each image in root/split/<class>/, sorted by class and
    name."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"Expected the folder {folder} with one subfolder of images per class "
            f"(e.g. {folder}/airplane/0001.png); check data.root (now {root})."
        )
    out = []  # os.scandir and plain strings: pathlib made listing 60k files take seconds
    for c in sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
    ):
        entries = sorted(
            (e for e in os.scandir(folder / c) if e.name.lower().endswith(IMAGE_SUFFIXES)),
            key=lambda e: e.name,
        )
        out += [(c, e.path, e.stat().st_size, e.stat().st_mtime_ns) for e in entries]
    if not out:
        raise DataError(
            f"{folder} holds no .png/.jpg/.jpeg images in class subfolders "
            f"({folder}/<class>/<image>); check data.root."
        )
    return out


def _user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "runner"


def _decode_image(path: str) -> torch.Tensor:
    """One file → uint8 (3, H, W) RGB (a seam that tests count)."""
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    except Exception as e:
        raise DataError(f"Could not decode the image {path} ({e}); remove or replace it.") from e


def _decode_all(files: list[tuple[str, str, int, int]], index: dict[str, int]):
    # Sequential on purpose: 32x32 files decode in ~0.1 ms each and threads only added GIL
    # contention.
    images = [_decode_image(f[1]) for f in files]
    for img, (_, path, *_) in zip(images, files):
        if img.shape != images[0].shape:
            raise DataError(
                f"In {os.path.dirname(path)}, {os.path.basename(path)} is "
                f"{tuple(img.shape[1:])} but {files[0][1]} is {tuple(images[0].shape[1:])}; "
                f"all images must share one size. Resize the folder."
            )
    return torch.stack(images).contiguous(), torch.tensor(
        [index[f[0]] for f in files], dtype=torch.int64
    )


def _save_cache(paths: Sequence[Path], d: dict) -> None:
    for path in paths:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(d, tmp)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    warnings.warn(
        f"Could not write the decoded-image cache to any of {[str(p) for p in paths]}; "
        f"the folder will be decoded again next time."
    )
