"""CIFAR-10 from the official python archive: downloaded once with its checksum, read from its
pickles by an unpickler that admits nothing but the format's arrays (no file can run code)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.utils import check_integrity, download_url, extract_archive

from runner.core.loader import DataError, Splits

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The official archive; per-file md5s as in torchvision.datasets.CIFAR10.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
)
# what a first run can do instead when the archive cannot be had
OFFLINE = (
    "Without the network: `python -m runner data=image_folder data.root=DIR` trains on your own "
    "images (DIR/train/<class>/* and DIR/test/<class>/*), and `python -m runner debug=smoke` "
    "on synthetic ones (1 minute on a CPU)"
)
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


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
                    f"{md5}. If it is the official data set, the copy is damaged: delete {folder} "
                    "so that it is extracted or downloaded again (data.download=true). If it is a "
                    "derived data set in the same format, set data.verify=false to skip the "
                    "checksums."
                )
    train = [_read_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    val_x, val_y = _read_batch(folder / "test_batch")
    classes = CLASSES
    if (folder / "batches.meta").is_file():
        classes = _label_names(folder / "batches.meta")
    for y, name in [(v[1], n) for v, n in zip(train, CIFAR10_TRAIN_FILES)] + [
        (val_y, "test_batch")
    ]:
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(
                f"Labels in {folder / name} must lie in [0, {len(classes)}) for the classes "
                f"{classes}; fix the file or its batches.meta label_names."
            )
    return Splits(
        torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), val_x, val_y, classes
    )


def _fetch_cifar10(root: Path, download: bool, verify: bool) -> None:
    """Make `root/cifar-10-batches-py` from the archive in root, downloading the archive if
    allowed."""
    archive = root / CIFAR10_ARCHIVE
    if not archive.is_file():
        if not download:
            raise DataError(
                f"CIFAR-10 was expected at {root / CIFAR10_FOLDER} but that folder does not exist. "
                f"Set data.download=true to download it, place {CIFAR10_ARCHIVE} ({CIFAR10_URL}) "
                f"in {root}, or point data.root at the folder that contains {CIFAR10_FOLDER}. "
                f"{OFFLINE}"
            )
        created = [p for p in (root, *root.parents) if not p.exists()]
        try:
            root.mkdir(parents=True, exist_ok=True)
            _download(CIFAR10_URL, root, CIFAR10_ARCHIVE)
        except (OSError, RuntimeError) as e:  # URLError and HTTPError are OSErrors
            # a partial file would otherwise look like a placed archive
            archive.unlink(missing_ok=True)
            # the folders made for the download go with it, when nothing else is in them
            for folder in created:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise DataError(
                f"Downloading CIFAR-10 from {CIFAR10_URL} into {root} failed ({e}). {OFFLINE}; "
                f"or download {CIFAR10_ARCHIVE} elsewhere and place it in {root} (data.root, or "
                f"RUNNER_DATA), or set data.root to a folder that already holds {CIFAR10_FOLDER}."
            ) from e
    if verify and not check_integrity(archive, CIFAR10_ARCHIVE_MD5):
        raise DataError(
            f"The archive {archive} does not match its expected md5 {CIFAR10_ARCHIVE_MD5}: it is "
            "damaged, incomplete or a different file. Delete it and run again with "
            "data.download=true to download it, or set data.verify=false for a derived data set in "
            "the same format."
        )
    try:
        extract_archive(str(archive), str(root))
    except Exception as e:  # tarfile, gzip and OS errors all mean the same thing here
        raise DataError(
            f"Could not extract {archive} ({e}); delete it and download it again "
            "(data.download=true)."
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
            f"{path} is refused: {e}. CIFAR-10's files hold only arrays, lists, bytes and numbers; "
            "a file that names anything else could run code when read. Use the official files or "
            "regenerate the data set."
        ) from None
    except Exception as e:
        raise DataError(
            f"Could not read the CIFAR-10 file {path} ({type(e).__name__}: {e}); it is "
            f"truncated or not a pickle. Delete {path.parent} and extract or download it "
            f"again (data.download=true), or regenerate the derived data set."
        ) from e
    if not isinstance(d, dict):
        raise DataError(
            f"{path} holds a {type(d).__name__}, expected a dict as in CIFAR-10's format."
        )
    return {_str(k): v for k, v in d.items()}


def _latin1(obj, encoding="latin1"):
    """What protocol-2 pickles of bytes call (_codecs.encode(text, "latin1")), with no other codec
    allowed."""
    if encoding != "latin1" or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not part of the format")
    return obj.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's batches are made of (dicts, lists, bytes, numbers and numpy
    arrays): any other global a pickle names is refused before it is looked up, so no file can make
    the reader call anything else."""

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
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which is not part of the format"
            )
        from numpy._core import multiarray, numeric

        own = {
            "_reconstruct": multiarray._reconstruct,
            "scalar": multiarray.scalar,
            "_frombuffer": numeric._frombuffer,
        }
        return own.get(name) or getattr(np, name)


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path)
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path} lacks the keys 'data' and 'labels' of CIFAR-10's format.")
    x, raw = np.asarray(d["data"]), np.asarray(d["labels"])
    if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):  # 2.7 or "3": 2, 3 silently
        raise DataError(
            f"{path}: 'labels' must be a list of whole numbers, one per image; got "
            f"{raw.dtype} values of shape {raw.shape}."
        )
    y = raw.astype(np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (n, 3072) (RGB planes of 32x32 "
            f"images) with one label per row; got {x.dtype} {x.shape} and {len(y)} labels."
        )
    return torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y)


def _label_names(path: Path) -> tuple[str, ...]:
    """batches.meta's class names; DataError when they are missing or two are the same (two
    labels would be one class in every figure)."""
    names = _unpickle(path).get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path} lacks its list 'label_names' (one name per class).")
    classes = tuple(_str(c) for c in names)
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise DataError(
            f"{path} names the classes {twice} more than once: each label needs its own name; "
            "fix label_names (or remove batches.meta to use CIFAR-10's names)."
        )
    return classes


def _str(s) -> str:
    return s.decode() if isinstance(s, bytes) else str(s)
