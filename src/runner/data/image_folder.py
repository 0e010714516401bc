"""A train/<class>/* + test/<class>/* tree of PNG or JPEG images, decoded once and cached."""

from __future__ import annotations

import hashlib
import math
import os
import stat
import unicodedata
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
    _check_names(root / "train", names)
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
    caches = [
        root / CACHE_NAME,
        _user_cache_dir() / f"image_folder_{key}.pt",
    ]  # 2nd: root read-only
    if cache and (cached := _cached(caches, fingerprint)) is not None:
        return cached
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


def _cached(caches: list[Path], fingerprint: str) -> Splits | None:
    """The splits of the first cache file written for this fingerprint; None if there is none."""
    for path in caches:
        if not _regular(path):  # absent; or a FIFO, which torch.load would wait on forever
            continue
        try:
            d = torch.load(path, weights_only=True)
            if d["fingerprint"] == fingerprint:
                return Splits(
                    d["train_x"], d["train_y"], d["val_x"], d["val_y"], tuple(d["classes"])
                )
        except Exception:  # a stale format or a damaged cache: decode again
            pass
    return None


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
        for e in entries:  # a FIFO named x.png would block the decoder; a folder is no image
            if not e.is_file():
                raise DataError(
                    f"{e.path} is named as an image but is not a file (a folder, a FIFO, a device "
                    "or a link to nothing): remove or rename it"
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


def _check_names(folder: Path, names: list[str]) -> None:
    """DataError for two class folders that differ only in case or Unicode form (`Cat` and `cat`):
    a person reads them as one class, the runner would train them as two."""
    seen: dict[str, str] = {}
    for name in names:
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            raise DataError(
                f"{folder} has the class folders {seen[key]!r} and {name!r}, which differ only in "
                "case or Unicode form: they would be two classes; merge or rename them"
            )
        seen[key] = name


# PIL modes of more than 8 bits per channel: convert("RGB") would clip them at 255 (16-bit grey
# becomes white) or truncate floats, silently
WIDE_MODES = {"I": "32-bit", "F": "floating-point", "I;16": "16-bit", "I;16L": "16-bit"}
WIDE_MODES |= {"I;16B": "16-bit", "I;16N": "16-bit"}


def _decode_image(path: str) -> torch.Tensor:
    """One file → uint8 (3, H, W) RGB (a seam that tests count)."""
    try:
        with Image.open(path) as im:
            if im.mode in WIDE_MODES:
                raise DataError(
                    f"{path} is a {WIDE_MODES[im.mode]} image (PIL mode {im.mode}): the runner "
                    "reads 8 bits per channel, and converting would clip or cut its values "
                    "silently; convert the folder to 8-bit images"
                )
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"Could not decode the image {path} ({e}); remove or replace it.") from e


def _decode_all(files: list[tuple[str, str, int, int]], index: dict[str, int]):
    """The images of `files` in one uint8 tensor, allocated once the first image gives the size
    (and checked against the machine's memory): an image of another size is refused as soon as it
    is decoded, before the rest are."""
    # Sequential on purpose: 32x32 files decode in ~0.1 ms each and threads only added GIL
    # contention.
    images = None
    for i, (_, path, *_) in enumerate(files):
        img = _decode_image(path)
        if images is None:
            _check_memory(len(files), img.shape, os.path.dirname(path))
            images = torch.empty((len(files), *img.shape), dtype=torch.uint8)
        elif img.shape != images.shape[1:]:
            raise DataError(
                f"In {os.path.dirname(path)}, {os.path.basename(path)} is "
                f"{tuple(img.shape[1:])} but {files[0][1]} is {tuple(images.shape[2:])}; "
                f"all images must share one size. Resize the folder."
            )
        images[i] = img
    labels = torch.tensor([index[f[0]] for f in files], dtype=torch.int64)
    return images, labels


def _check_memory(n: int, shape: tuple, where: str) -> None:
    """DataError when n images of `shape` cannot be held in this machine's memory."""
    need = n * math.prod(shape)
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not known here: nothing to check against
        return
    if need > have:
        raise DataError(
            f"{n} images of {shape[2]}x{shape[1]} like those in {where} take {need / 2**30:.1f} "
            f"GiB as uint8 and this machine has {have / 2**30:.1f} GiB of memory: resize the "
            "images (the models here train on small ones, e.g. 32x32) or use fewer"
        )


def _save_cache(paths: Sequence[Path], d: dict) -> None:
    """Write the cache to the first of `paths` that takes it. Any failure (a read-only or full
    folder: torch.save raises RuntimeError there, not OSError) goes on to the next path and leaves
    no partial file behind; a temporary file of a killed process is removed on the next write."""
    for path in paths:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(path)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(tmp, flags, 0o644), "wb") as f:
                torch.save(d, f)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
            return
        except Exception:  # OSError, torch's RuntimeError: the next place, or none
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    warnings.warn(
        f"Could not write the decoded-image cache to any of {[str(p) for p in paths]}; "
        f"the folder will be decoded again next time."
    )


def _remove_stale(path: Path) -> None:
    """Remove PATH.<pid>.tmp files whose process is gone (killed while writing the cache)."""
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 1 : -len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True
