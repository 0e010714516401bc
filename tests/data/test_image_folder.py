"""runner.data.image_folder: a tree of class folders, decoded once and cached."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import runner.data.image_folder as D
from runner.core.loader import DataError


def write_tree(root, classes=("cat", "ant", "bee"), per_class=2, size=(8, 6)):
    """PNG (exact, incl. greyscale) and JPEG images; PNG pixel (0, 0, 0) encodes the class index
    in sorted order and the image number."""
    for split, n in (("train", per_class), ("test", 1)):
        for ci, c in enumerate(sorted(classes)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                a = np.full((size[1], size[0], 3), 10 * ci + i, dtype=np.uint8)
                a[1, 2] = (200, 100, 50)
                Image.fromarray(a).save(root / split / c / f"{i:04d}.png")
            Image.fromarray(np.full((size[1], size[0]), 99, np.uint8), "L").save(
                root / split / c / "g.PNG"
            )
            Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(
                root / split / c / "z.jpg"
            )
            (root / split / c / "notes.txt").write_text("ignored")


def test_image_folder_reads_tree(tmp_path):
    write_tree(tmp_path)
    s = D.load_image_folder(tmp_path, cache=False)
    assert s.classes == ("ant", "bee", "cat")
    assert s.train_x.shape == (3 * 4, 3, 6, 8) and s.val_x.shape == (3 * 3, 3, 6, 8)
    assert s.train_x.dtype == torch.uint8 and s.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert s.train_x[5, :, 0, 0].tolist() == [11] * 3  # bee/0001.png
    assert s.train_x[5, :, 1, 2].tolist() == [200, 100, 50]
    assert s.train_x[6, :, 3, 3].tolist() == [99] * 3  # bee/g.PNG, greyscale → RGB


def test_image_folder_cifar_class_order(tmp_path):
    write_tree(tmp_path, classes=D.CLASSES, per_class=1)
    assert D.load_image_folder(tmp_path, cache=False).classes == D.CLASSES


def test_image_folder_cache(tmp_path, monkeypatch):
    write_tree(tmp_path)
    calls = []
    decode = D._decode_image
    monkeypatch.setattr(D, "_decode_image", lambda p: calls.append(p) or decode(p))
    first = D.load_image_folder(tmp_path)
    assert len(calls) == 21 and (tmp_path / D.CACHE_NAME).is_file()
    second = D.load_image_folder(tmp_path)
    assert (
        len(calls) == 21
        and torch.equal(first.train_x, second.train_x)
        and first.classes == second.classes
    )
    Image.fromarray(np.ones((6, 8, 3), np.uint8)).save(tmp_path / "test" / "ant" / "new.png")
    assert D.load_image_folder(tmp_path).val_x.shape[0] == 10 and len(calls) == 21 + 22


def test_image_folder_cache_fallback_dir(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_tree(root)
    (root / D.CACHE_NAME).mkdir()  # the cache file cannot be written in root
    monkeypatch.setattr(D, "_user_cache_dir", lambda: tmp_path / "cache")
    D.load_image_folder(root)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    monkeypatch.setattr(D, "_decode_image", lambda p: pytest.fail("decoded despite cache"))
    D.load_image_folder(root)


def test_image_folder_errors(tmp_path):
    write_tree(tmp_path / "a")
    Image.fromarray(np.zeros((7, 8, 3), np.uint8)).save(
        tmp_path / "a" / "train" / "bee" / "odd.png"
    )
    with pytest.raises(DataError, match=str(tmp_path / "a" / "train" / "bee")):
        D.load_image_folder(tmp_path / "a", cache=False)
    write_tree(tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "test")
    with pytest.raises(DataError, match=str(tmp_path / "b" / "test")):
        D.load_image_folder(tmp_path / "b", cache=False)


# ---------------------------------------------------------------- synthetic, subsets, stats
