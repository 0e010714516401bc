"""Data sets and the on-device batch loader.

Conventions: images are uint8 tensors (N, 3, H, W), contiguous, on the CPU; labels are int64 (N,).
`Splits.val_*` is the test split unless `hold_out` replaced it. Every loader reads whole arrays into
memory once; the `DeviceLoader` then keeps a split on one device and does shuffling, augmentation
and normalisation there in batched tensor ops. Functions take plain values, never the config.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets.utils import check_integrity, download_url, extract_archive

from runner.config import UserError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The official archive; per-file md5s as in torchvision.datasets.CIFAR10.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IGNORE = -100  # the label of a padding image: F.cross_entropy's default ignore_index
CACHE_NAME = ".runner_cache_v1.pt"


class DataError(UserError, ValueError):
    """A data set is missing, malformed or fails its checksum; the message says how to fix it."""


@dataclass
class Splits:
    train_x: torch.Tensor  # uint8 (N, 3, H, W), contiguous, CPU
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    test_x: torch.Tensor | None = None  # the test split when `hold_out` made val_* from training images
    test_y: torch.Tensor | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the images and labels of both splits, in order: which data a run saw.
        Computed once per Splits, like `train_channel_stats`: the runs of a pack share one Splits."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.val_x, self.val_y):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @functools.cached_property
    def train_channel_stats(self) -> tuple[list[float], list[float]]:
        """channel_stats(train_x): about a second for CIFAR-10's 50,000 images, so once per Splits."""
        return channel_stats(self.train_x)

    @functools.cached_property
    def train_pixel_mean(self) -> torch.Tensor:
        """The mean training image on [0, 1] (Keras' per-pixel mean), (C, H, W): a float copy of the whole set, so
        once per Splits (the loaders, the test split and best.pt's inference settings all ask for it)."""
        return self.train_x.float().div(255).mean(0)


# ---------------------------------------------------------------- CIFAR-10 python archive


def load_cifar10(root: str | Path, download: bool = True, verify: bool = True) -> Splits:
    """Load `root/cifar-10-batches-py` (data_batch_1..5 → train, test_batch → val).

    If the folder is missing, extract `root/cifar-10-python.tar.gz`, downloading it first when
    `download` is true. `verify` checks the md5 of the archive and of every file; with
    `verify=False` any folder in the same format is accepted (derived data sets, any row count).
    """
    root = Path(root).expanduser()
    folder = root / CIFAR10_FOLDER
    if not folder.is_dir():
        _fetch_cifar10(root, download, verify)
    if verify:
        for name, md5 in CIFAR10_MD5.items():
            if not check_integrity(folder / name, md5):
                raise DataError(
                    f"CIFAR-10 file {folder / name} is missing or does not match its expected md5 "
                    f"{md5}. If it is the official data set, the copy is damaged: delete {folder} so "
                    f"that it is extracted or downloaded again (data.download=true). If it is a derived "
                    f"data set in the same format, set data.verify=false to skip the checksums."
                )
    train = [_read_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    val_x, val_y = _read_batch(folder / "test_batch")
    classes = CLASSES
    if (folder / "batches.meta").is_file():
        classes = tuple(_str(c) for c in _unpickle(folder / "batches.meta")["label_names"])
    for y, name in [(v[1], n) for v, n in zip(train, CIFAR10_TRAIN_FILES)] + [(val_y, "test_batch")]:
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(
                f"Labels in {folder / name} must lie in [0, {len(classes)}) for the classes "
                f"{classes}; fix the file or its batches.meta label_names."
            )
    return Splits(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), val_x, val_y, classes)


def _fetch_cifar10(root: Path, download: bool, verify: bool) -> None:
    """Make `root/cifar-10-batches-py` from the archive in root, downloading the archive if allowed."""
    archive = root / CIFAR10_ARCHIVE
    if not archive.is_file():
        if not download:
            raise DataError(
                f"CIFAR-10 was expected at {root / CIFAR10_FOLDER} but that folder does not exist. "
                f"Set data.download=true to download it, place {CIFAR10_ARCHIVE} ({CIFAR10_URL}) in "
                f"{root}, or point data.root at the folder that contains {CIFAR10_FOLDER}."
            )
        created = [p for p in (root, *root.parents) if not p.exists()]
        try:
            root.mkdir(parents=True, exist_ok=True)
            _download(CIFAR10_URL, root, CIFAR10_ARCHIVE)
        except (OSError, RuntimeError) as e:  # URLError and HTTPError are OSErrors
            archive.unlink(missing_ok=True)  # a partial file would otherwise look like a placed archive
            for folder in created:  # the folders made for the download go with it, when nothing else is in them
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise DataError(
                f"Downloading CIFAR-10 from {CIFAR10_URL} into {root} failed ({e}). Without network "
                f"access, download {CIFAR10_ARCHIVE} elsewhere and place it in {root} (data.root), "
                f"or set data.root to a folder that already contains {CIFAR10_FOLDER}."
            ) from e
    if verify and not check_integrity(archive, CIFAR10_ARCHIVE_MD5):
        raise DataError(
            f"The archive {archive} does not match its expected md5 {CIFAR10_ARCHIVE_MD5}: it is "
            f"damaged, incomplete or a different file. Delete it and run again with data.download=true "
            f"to download it, or set data.verify=false for a derived data set in the same format."
        )
    try:
        extract_archive(str(archive), str(root))
    except Exception as e:  # tarfile, gzip and OS errors all mean the same thing here
        raise DataError(
            f"Could not extract {archive} ({e}); delete it and download it again (data.download=true)."
        ) from e
    if not (root / CIFAR10_FOLDER).is_dir():
        raise DataError(
            f"{archive} does not contain the folder {CIFAR10_FOLDER}; it is not the "
            f"CIFAR-10 python archive. Delete it and set data.download=true."
        )


def _download(url: str, root: Path, filename: str) -> None:
    """Fetch url to root/filename (a seam that tests replace)."""
    download_url(url, str(root), filename)


def _unpickle(path: Path) -> dict:
    """Read one CIFAR pickle; keys become str whatever protocol wrote them."""
    if not path.is_file():
        raise DataError(
            f"The CIFAR-10 file {path} is missing; {path.parent} must hold data_batch_1..5 "
            f"and test_batch. Delete the folder and extract or download it again "
            f"(data.download=true)."
        )
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path} is refused: {e}. CIFAR-10's files hold only arrays, lists, bytes and numbers; a file that "
            "names anything else could run code when read. Use the official files or regenerate the data set."
        ) from None
    except Exception as e:
        raise DataError(
            f"Could not read the CIFAR-10 file {path} ({type(e).__name__}: {e}); it is "
            f"truncated or not a pickle. Delete {path.parent} and extract or download it "
            f"again (data.download=true), or regenerate the derived data set."
        ) from e
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, expected a dict as in CIFAR-10's format.")
    return {_str(k): v for k, v in d.items()}


def _latin1(obj, encoding="latin1"):
    """What protocol-2 pickles of bytes call (_codecs.encode(text, "latin1")), with no other codec allowed."""
    if encoding != "latin1" or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not part of the format")
    return obj.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's batches are made of (dicts, lists, bytes, numbers and numpy arrays): any other
    global a pickle names is refused before it is looked up, so no file can make the reader call anything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5's arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of the format")
        from numpy._core import multiarray, numeric

        own = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar, "_frombuffer": numeric._frombuffer}
        return own.get(name) or getattr(np, name)


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path)
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path} lacks the keys 'data' and 'labels' of CIFAR-10's format.")
    x, y = np.asarray(d["data"]), np.asarray(d["labels"], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (n, 3072) (RGB planes of 32x32 "
            f"images) with one label per row; got {x.dtype} {x.shape} and {len(y)} labels."
        )
    return torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y)


def _str(s) -> str:
    return s.decode() if isinstance(s, bytes) else str(s)


# ---------------------------------------------------------------- image folder


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
    stats = [(s, c, os.path.basename(p), size, mtime) for s in files for c, p, size, mtime in files[s]]
    fingerprint = hashlib.sha256(repr((classes, stats)).encode()).hexdigest()
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    caches = [root / CACHE_NAME, _user_cache_dir() / f"image_folder_{key}.pt"]  # 2nd: root read-only
    if cache:
        for path in caches:
            try:
                d = torch.load(path, weights_only=True)
                if d["fingerprint"] == fingerprint:
                    return Splits(d["train_x"], d["train_y"], d["val_x"], d["val_y"], tuple(d["classes"]))
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
            caches, dict(fingerprint=fingerprint, train_x=tx, train_y=ty, val_x=vx, val_y=vy, classes=list(classes))
        )
    return splits


def _list_split(root: Path, split: str) -> list[tuple[str, str, int, int]]:
    """(class, path, size, mtime_ns) of each image in root/split/<class>/, sorted by class and name."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"Expected the folder {folder} with one subfolder of images per class "
            f"(e.g. {folder}/airplane/0001.png); check data.root (now {root})."
        )
    out = []  # os.scandir and plain strings: pathlib made listing 60k files take seconds
    for c in sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")):
        entries = sorted(
            (e for e in os.scandir(folder / c) if e.name.lower().endswith(IMAGE_SUFFIXES)), key=lambda e: e.name
        )
        out += [(c, e.path, e.stat().st_size, e.stat().st_mtime_ns) for e in entries]
    if not out:
        raise DataError(
            f"{folder} holds no .png/.jpg/.jpeg images in class subfolders ({folder}/<class>/<image>); check data.root."
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
    # Sequential on purpose: 32x32 files decode in ~0.1 ms each and threads only added GIL contention.
    images = [_decode_image(f[1]) for f in files]
    for img, (_, path, *_) in zip(images, files):
        if img.shape != images[0].shape:
            raise DataError(
                f"In {os.path.dirname(path)}, {os.path.basename(path)} is "
                f"{tuple(img.shape[1:])} but {files[0][1]} is {tuple(images[0].shape[1:])}; "
                f"all images must share one size. Resize the folder."
            )
    return torch.stack(images).contiguous(), torch.tensor([index[f[0]] for f in files], dtype=torch.int64)


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


# ---------------------------------------------------------------- synthetic


def make_synthetic(
    n_train: int = 2000,
    n_val: int = 500,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    noise: float = 0.9,
) -> Splits:
    """A learnable toy set: each class is a fixed smooth periodic colour pattern, shown at a random
    cyclic shift, under clutter: a random pattern of the same kind times `noise` plus pixel noise of
    std noise/2 (both relative to the class pattern).

    The random shift defeats template matching (a nearest-class-mean classifier is near chance),
    while a tiny ResNet reaches ~70 % val accuracy in 200 SGD steps at the default noise=0.9.
    Deterministic given the arguments; labels balanced, in shuffled order.
    """
    g = torch.Generator().manual_seed(seed)
    s = image_size
    pos = torch.arange(s)
    k = torch.arange(-2, 3.0)
    ky, kx = (t.flatten() for t in torch.meshgrid(k, k, indexing="ij"))
    half = (ky > 0) | ((ky == 0) & (kx > 0))  # one of each ±k pair: frequencies 1..2 cycles per image
    angle = 2 * math.pi / s * (ky[half, None, None] * pos[:, None] + kx[half, None, None] * pos)
    basis = torch.cat([angle.cos(), angle.sin()])  # (K, S, S), periodic so shifts have no seams

    def field(n: int) -> torch.Tensor:  # random smooth periodic colour fields with unit std
        f = torch.einsum("nck,kij->ncij", torch.randn(n, 3, len(basis), generator=g), basis)
        return f / f.flatten(1).std(1).view(-1, 1, 1, 1)

    patterns = field(num_classes)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        sy, sx = torch.randint(0, s, (2, n, 1), generator=g)
        rows, cols = ((pos + sy) % s)[:, None, :, None], ((pos + sx) % s)[:, None, None, :]
        x = patterns[y.view(-1, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
        x = x + noise * field(n) + noise / 2 * torch.randn(n, 3, s, s, generator=g)
        return (128 + 32 * x).round().clamp(0, 255).to(torch.uint8).contiguous(), y

    (tx, ty), (vx, vy) = draw(n_train), draw(n_val)
    names = CLASSES if num_classes == 10 else tuple(f"class{i}" for i in range(num_classes))
    return Splits(tx, ty, vx, vy, names)


# ---------------------------------------------------------------- subsets and statistics


def stratified_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted indices of n samples: round-robin over classes (ascending label), each class's
    samples in original order, classes that run out skipped. Deterministic."""
    labels = labels.cpu()
    if not 0 < n <= len(labels):
        raise DataError(
            f"data.subset / data.val_split must be between 1 and the {len(labels)} training images; got {n}."
        )
    order = torch.argsort(labels, stable=True)  # grouped by class, original order within
    rank = torch.empty_like(order)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank[order] = torch.arange(len(labels)) - starts[labels[order]]  # position within own class
    key = rank * (int(labels.max()) + 1) + labels  # sort by (rank, class) = round-robin
    return torch.sort(torch.argsort(key, stable=True)[:n]).values


def hold_out(splits: Splits, n: int) -> Splits:
    """Replace the val split by the last n training images, stratified (round-robin from the end); the old val split
    (the test split) becomes test_*."""
    if n >= len(splits.train_y):
        raise DataError(
            f"data.val_split={n} leaves no training images (there are {len(splits.train_y)}); choose a smaller value."
        )
    last = len(splits.train_y) - 1 - stratified_subset(splits.train_y.flip(0), n)
    val = torch.sort(last).values
    keep = torch.ones(len(splits.train_y), dtype=torch.bool)
    keep[val] = False
    return Splits(
        splits.train_x[keep].contiguous(),
        splits.train_y[keep],
        splits.train_x[val].contiguous(),
        splits.train_y[val],
        splits.classes,
        splits.val_x,  # the test split stays, for the test accuracy of the final and the selected weights
        splits.val_y,
    )


def channel_stats(train_x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images on the [0, 1] scale."""
    total = torch.zeros(train_x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in train_x.split(4096):  # float64 copies of the whole set would need GBs
        c = chunk.to(torch.float64) / 255
        total += c.sum((0, 2, 3))
        squares += (c * c).sum((0, 2, 3))
    count = train_x.numel() / train_x.shape[1]
    mean = total / count
    return mean.tolist(), (squares / count - mean * mean).clamp_min(0).sqrt().tolist()


# ---------------------------------------------------------------- loader


class DeviceLoader:
    """The whole split on one device as uint8; batches are shuffled, augmented and normalised there
    in a few batched tensor ops, never image by image.

    Every random draw of epoch e (permutation, crop offsets in [0, 2p], flips) comes up front from a
    generator seeded by (seed, e), so `epoch(e, start_step=k)` yields exactly the batches k, k+1, ...
    of an uninterrupted `epoch(e)`. Batches are float32 on [0, 1], then `(x - mean) / std`; mean/std
    are per-channel lists on the [0, 1] scale, or mean a (C, H, W) tensor with std None for per-pixel
    mean subtraction. The iteration never synchronises with the host.

    `drop_last`: every batch is full (the permutation's last len % batch_size images wait for another epoch).
    `pad_last`: the last batch is filled up to batch_size by repeating its last image, labelled IGNORE (which
    F.cross_entropy and an argmax comparison both skip), so a validation pass has one shape throughout.
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        device,
        shuffle: bool,
        crop_padding: int = 0,
        flip: bool = False,
        pad_mode: str = "zeros",
        mean=None,
        std=None,
        seed: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
        pad_last: bool = False,
    ):
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or len(images_u8) != len(labels):
            raise DataError(
                f"DeviceLoader expects uint8 images (N, C, H, W) and N labels; got "
                f"{images_u8.dtype} {tuple(images_u8.shape)} and {len(labels)} labels."
            )
        if pad_mode not in ("zeros", "replicate"):
            raise DataError(f"data.pad_mode must be 'zeros' or 'replicate'; got {pad_mode!r}.")
        if batch_size < 1 or crop_padding < 0:
            raise DataError(f"batch size must be ≥ 1 and data.crop_padding ≥ 0; got {batch_size}, {crop_padding}.")
        self.device = torch.device(device)
        self.x = images_u8.to(self.device).contiguous()
        self.y = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.flip, self.pad_mode = batch_size, shuffle, flip, pad_mode
        self.crop_padding, self.seed, self.drop_last, self.pad_last = crop_padding, seed, drop_last, pad_last
        if drop_last and len(labels) < batch_size:
            raise DataError(
                f"{len(labels)} images make no full batch of {batch_size}: lower batch_size or use "
                f"data.drop_last=false."
            )
        self.channels_last = channels_last
        self._layout = torch.channels_last if channels_last else torch.contiguous_format
        c, h, w = self.x.shape[1:]
        self.xp = self.x
        if crop_padding:  # pad the split once; every crop is then a window of it (1.56x memory at p=4)
            p = crop_padding
            if pad_mode == "zeros":
                self.xp = F.pad(self.x, (p, p, p, p))
            else:  # replicate: clamp the source rows and columns (uint8 has no replication pad kernel)
                rows = torch.arange(-p, h + p, device=self.device).clamp(0, h - 1)
                cols = torch.arange(-p, w + p, device=self.device).clamp(0, w - 1)
                self.xp = self.x[:, :, rows][:, :, :, cols].contiguous()
        if flip:  # a mirrored copy next to the originals: crop and flip become one gather
            self.xp = torch.cat([self.xp, self.xp.flip(3)])
        # Fold /255, -mean and /std into one multiply and one subtract.
        m = torch.zeros(c) if mean is None else torch.as_tensor(mean, dtype=torch.float32, device="cpu")
        s = torch.ones(c) if std is None else torch.as_tensor(std, dtype=torch.float32, device="cpu")
        m = m.view(1, *m.shape) if m.ndim == 3 else m.view(1, -1, 1, 1)
        s = s.view(1, -1, 1, 1)
        self.scale = (1 / (255 * s)).to(self.device)
        self.neg_shift = (-m / s).to(self.device)

    def __len__(self) -> int:
        n, b = len(self.y), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _generator(self, epoch: int) -> torch.Generator:
        key = hashlib.sha256(f"DeviceLoader:{self.seed}:{epoch}".encode()).digest()
        return torch.Generator(device=self.device).manual_seed(int.from_bytes(key[:8], "little") >> 1)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images float32 (B, C, H, W), labels int64 (B,)) for steps start_step..len-1."""
        n, (h, w), p, dev = len(self.y), self.x.shape[2:], self.crop_padding, self.device
        g = self._generator(epoch)
        order = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g, device=dev)  # crop offset in the padded image
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g, device=dev)
        mirror = torch.rand(n, generator=g, device=dev) < 0.5
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must lie in [0, {len(self)}]; got {start_step}.")
        if self.flip:  # the mirror of the crop at dx is the crop at 2p - dx of the mirrored copy (index + n)
            order_src = torch.where(mirror, order + n, order)
            dx = torch.where(mirror, 2 * p - dx, dx)
        else:
            order_src = order
        # windows[k, :, oy, ox] is image k cropped at (oy, ox) of its padded copy: a view, no copy
        windows = self.xp.unfold(2, h, 1).unfold(3, w, 1)
        for step in range(start_step, len(self)):
            lo, hi = step * self.batch_size, min((step + 1) * self.batch_size, n)
            idx, src, oy, ox = order[lo:hi], order_src[lo:hi], dy[lo:hi], dx[lo:hi]
            labels = self.y[idx]
            if self.pad_last and hi - lo < self.batch_size:  # one batch shape for a compiled or captured forward
                fill = self.batch_size - (hi - lo)
                idx, src, oy, ox = (torch.cat([t, t[-1:].expand(fill)]) for t in (idx, src, oy, ox))
                labels = torch.cat([labels, labels.new_full((fill,), IGNORE)])
            # crop, flip and batch in one gather of whole windows (validation: a plain gather)
            xb = windows[src, :, oy, ox] if p or self.flip else self.x[idx]
            # cast, normalise and (channels_last) change layout in one kernel, writing straight into the layout
            out = torch.empty(xb.shape, device=dev, memory_format=self._layout)
            yield torch.addcmul(self.neg_shift, xb, self.scale, out=out), labels
