"""runner.data.image_folder: a tree of class folders, decoded once and cached."""

import os
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


# ---------------------------------------------------------------- caches and folders that are not
# what they seem


def test_a_cache_torch_cannot_write_falls_back_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """A read-only or full data.root: torch.save raises RuntimeError (its writer's failure), not
    OSError, after part of the file is written."""
    root = tmp_path / "data"
    write_tree(root)
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 1:  # the first place tried: data.root
            f.write(b"half a cache")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(D.torch, "save", full_disk)
    monkeypatch.setattr(D, "_user_cache_dir", lambda: tmp_path / "cache")
    D.load_image_folder(root)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # the documented fallback
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]  # nothing partial left


def test_a_temporary_cache_file_of_a_killed_run_is_removed_by_the_next_write(tmp_path):
    write_tree(tmp_path)
    stale = tmp_path / f"{D.CACHE_NAME}.999999999.tmp"  # no such process
    stale.write_bytes(b"half a cache")
    D.load_image_folder(tmp_path)
    assert not stale.exists() and (tmp_path / D.CACHE_NAME).is_file()


def test_a_fifo_where_the_cache_or_an_image_is_does_not_block(tmp_path):
    write_tree(tmp_path)
    os.mkfifo(tmp_path / D.CACHE_NAME)  # torch.load would wait on it for ever
    D.load_image_folder(tmp_path, cache=True)  # decoded instead; the write replaces the FIFO
    os.mkfifo(tmp_path / "train" / "ant" / "fifo.png")
    with pytest.raises(DataError, match="fifo.png is named as an image but is not a file"):
        D.load_image_folder(tmp_path, cache=False)


def test_a_16_bit_image_is_refused_rather_than_clipped(tmp_path):
    write_tree(tmp_path)
    wide = Image.fromarray(np.full((6, 8), 40000, np.uint16))  # PIL mode I;16
    wide.save(tmp_path / "train" / "ant" / "wide.png")
    with pytest.raises(DataError, match="16-bit image"):
        D.load_image_folder(tmp_path, cache=False)


def test_class_folders_that_differ_only_in_case_are_refused(tmp_path):
    write_tree(tmp_path, classes=("cat", "Cat", "bee"))
    with pytest.raises(DataError, match="'Cat' and 'cat'.*differ only in case"):
        D.load_image_folder(tmp_path, cache=False)


def test_an_image_of_another_size_stops_the_decoding_at_once(tmp_path, monkeypatch):
    """Each image is compared as it is decoded, into one tensor allocated for all: a folder of
    large images is not decoded whole before its sizes are checked."""
    write_tree(tmp_path, per_class=20)
    Image.fromarray(np.zeros((7, 8, 3), np.uint8)).save(tmp_path / "train" / "ant" / "0000a.png")
    calls = []
    decode = D._decode_image
    monkeypatch.setattr(D, "_decode_image", lambda p: calls.append(p) or decode(p))
    with pytest.raises(DataError, match="0000a.png is"):
        D.load_image_folder(tmp_path, cache=False)
    assert len(calls) == 2  # ant/0000.png, then ant/0000a.png: none of the other 60
