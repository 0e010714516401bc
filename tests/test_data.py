"""Tests for runner.core.data: CIFAR-10 archive reading, image folders, synthetic data, subsets, loader."""

import dataclasses
import hashlib
import pickle
import shutil
import socket
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import runner.core.data as D
from runner.core.data import DataError, DeviceLoader

ROWS = 20  # images per batch file in the fake archive


# ---------------------------------------------------------------- CIFAR-10 archive


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar_folder(root):
    """A tiny cifar-10-batches-py in the real format: py2-style pickles with bytes keys."""
    folder = root / D.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for b, name in enumerate(D.CIFAR10_TRAIN_FILES + ("test_batch",)):
        data = rng.integers(0, 256, (ROWS, 3072), dtype=np.uint8)
        labels = [(i + b) % 10 for i in range(ROWS)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in D.CLASSES], b"num_vis": 3072}, f, protocol=2)
    return folder


def write_cifar_archive(root):
    """root/cifar-10-python.tar.gz holding the tiny folder, plus the md5s of everything in it."""
    src = root / "src"
    folder = write_cifar_folder(src)
    md5s = {p.name: _md5(p) for p in folder.iterdir()}
    archive = root / D.CIFAR10_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=D.CIFAR10_FOLDER)
    shutil.rmtree(src)
    return archive, md5s


def test_cifar_parse_unverified(tmp_path):
    folder = write_cifar_folder(tmp_path)
    s = D.load_cifar10(tmp_path, download=False, verify=False)
    assert s.train_x.shape == (5 * ROWS, 3, 32, 32) and s.train_x.dtype == torch.uint8
    assert s.val_x.shape == (ROWS, 3, 32, 32) and s.train_x.is_contiguous()
    assert s.train_y.dtype == torch.int64 and s.train_y[:3].tolist() == [0, 1, 2]
    assert s.train_y[ROWS : ROWS + 2].tolist() == [1, 2] and s.classes == D.CLASSES
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    # Row-major RGB planes: byte c*1024 + r*32 + col of row i is channel c, row r, column col.
    i, c, r, col = 7, 2, 5, 30
    assert s.train_x[ROWS + i, c, r, col] == raw[i, c * 1024 + r * 32 + col]


def test_cifar_verify_names_file_and_md5(tmp_path):
    write_cifar_folder(tmp_path)
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path, download=False, verify=True)
    msg = str(e.value)
    assert "data_batch_1" in msg and D.CIFAR10_MD5["data_batch_1"] in msg and "data.verify=false" in msg


def test_cifar_truncated_file(tmp_path):
    path = write_cifar_folder(tmp_path) / "data_batch_3"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_3"):
        D.load_cifar10(tmp_path, download=False, verify=False)


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path, download=False)
    assert str(tmp_path / D.CIFAR10_FOLDER) in str(e.value) and "data.download=true" in str(e.value)


def test_cifar_download_unreachable(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{D.CIFAR10_ARCHIVE}"
    monkeypatch.setattr(D, "CIFAR10_URL", url)
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path, download=True)
    assert url in str(e.value) and "failed" in str(e.value) and D.CIFAR10_ARCHIVE in str(e.value)
    assert not (tmp_path / D.CIFAR10_ARCHIVE).exists()
    with pytest.raises(DataError):  # a data.root the download made goes with the failed download
        D.load_cifar10(tmp_path / "new" / "root", download=True)
    assert not (tmp_path / "new").exists() and tmp_path.is_dir()


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """A correct-format archive elsewhere, with the module's expected md5s patched to match it."""
    path, md5s = write_cifar_archive(tmp_path / "store")
    monkeypatch.setattr(D, "CIFAR10_MD5", md5s)
    monkeypatch.setattr(D, "CIFAR10_ARCHIVE_MD5", _md5(path))
    return path


def test_cifar_placed_archive_is_extracted_offline(tmp_path, archive):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(archive, root)
    s = D.load_cifar10(root, download=False, verify=True)
    assert s.train_x.shape[0] == 5 * ROWS and (root / D.CIFAR10_FOLDER / "test_batch").is_file()


def test_cifar_download_checksum_extract(tmp_path, archive, monkeypatch):
    calls = []

    def fake_download(url, root, filename):
        calls.append(url)
        shutil.copy(archive, root / filename)

    monkeypatch.setattr(D, "_download", fake_download)
    s = D.load_cifar10(tmp_path / "root", download=True, verify=True)
    assert calls == [D.CIFAR10_URL] and s.val_y.shape == (ROWS,)
    D.load_cifar10(tmp_path / "root", download=True, verify=True)  # extracted folder is reused
    assert len(calls) == 1


def test_cifar_bad_archive_checksum(tmp_path, archive, monkeypatch):
    monkeypatch.setattr(D, "_download", lambda url, root, filename: shutil.copy(archive, root / filename))
    monkeypatch.setattr(D, "CIFAR10_ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DataError, match="0{32}") as e:
        D.load_cifar10(tmp_path / "root", download=True, verify=True)
    assert D.CIFAR10_ARCHIVE in str(e.value)


# ---------------------------------------------------------------- image folder


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
            Image.fromarray(np.full((size[1], size[0]), 99, np.uint8), "L").save(root / split / c / "g.PNG")
            Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(root / split / c / "z.jpg")
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
    assert len(calls) == 21 and torch.equal(first.train_x, second.train_x) and first.classes == second.classes
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
    Image.fromarray(np.zeros((7, 8, 3), np.uint8)).save(tmp_path / "a" / "train" / "bee" / "odd.png")
    with pytest.raises(DataError, match=str(tmp_path / "a" / "train" / "bee")):
        D.load_image_folder(tmp_path / "a", cache=False)
    write_tree(tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "test")
    with pytest.raises(DataError, match=str(tmp_path / "b" / "test")):
        D.load_image_folder(tmp_path / "b", cache=False)


# ---------------------------------------------------------------- synthetic, subsets, stats


def test_synthetic_deterministic_balanced_not_trivial():
    a, b = D.make_synthetic(seed=3), D.make_synthetic(seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, D.make_synthetic(seed=4).train_x)
    assert a.train_x.shape == (2000, 3, 32, 32) and a.train_x.dtype == torch.uint8 and a.val_x.shape[0] == 500
    assert torch.bincount(a.train_y).tolist() == [200] * 10 and a.classes == D.CLASSES
    # Class patterns appear at random shifts, so a nearest-class-mean classifier stays near chance.
    x, v = a.train_x.flatten(1).float(), a.val_x.flatten(1).float()
    means = torch.stack([x[a.train_y == c].mean(0) for c in range(10)])
    assert (torch.cdist(v, means).argmin(1) == a.val_y).float().mean() < 0.35
    assert D.make_synthetic(10, 6, num_classes=3, image_size=16).train_x.shape == (10, 3, 16, 16)


def test_stratified_subset_round_robin():
    labels = torch.tensor([2, 0, 0, 1, 0, 2, 1, 0, 2])
    assert D.stratified_subset(labels, 4).tolist() == [0, 1, 2, 3]  # 0@1, 1@3, 2@0, then 0@2
    idx = D.stratified_subset(labels, 7)
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 6] and torch.bincount(labels[idx]).tolist() == [3, 2, 2]
    big = torch.arange(1000) % 10
    assert torch.bincount(big[D.stratified_subset(big, 100)]).tolist() == [10] * 10
    with pytest.raises(DataError, match="data.subset"):
        D.stratified_subset(labels, 10)


def test_hold_out():
    x, y = index_images(100), torch.tensor([0, 1, 1, 2] * 25)
    s = D.Splits(x, y, x[:5], y[:5], ("a", "b", "c"))
    h = D.hold_out(s, 8)
    ids = lambda imgs: (imgs[:, 1, 0, 0].long() + 256 * imgs[:, 2, 0, 0].long()).tolist()
    # Round-robin from the end: classes 0, 1, 2 take turns, each from its last image backwards.
    assert ids(h.val_x) == [88, 92, 94, 95, 96, 97, 98, 99] and h.val_y.tolist() == [0, 0, 1, 2, 0, 1, 1, 2]
    assert ids(h.train_x) == [i for i in range(100) if i not in ids(h.val_x)] and h.classes == s.classes
    assert torch.equal(h.train_y, y[torch.tensor(ids(h.train_x))]) and h.train_x.is_contiguous()
    with pytest.raises(DataError, match="data.val_split"):
        D.hold_out(s, 100)


def test_channel_stats():
    x = torch.randint(0, 256, (50, 3, 5, 4), dtype=torch.uint8)
    mean, std = D.channel_stats(x)
    f = x.double() / 255
    assert np.allclose(mean, f.mean((0, 2, 3))) and np.allclose(std, f.std((0, 2, 3), unbiased=False))


# ---------------------------------------------------------------- loader


def index_images(n, h=8, w=8):
    """Image k: channel 0 = 1 + position (row*w + col), channel 1 = k % 256, channel 2 = k // 256."""
    x = torch.empty(n, 3, h, w, dtype=torch.uint8)
    x[:, 0] = (1 + torch.arange(h * w)).view(h, w)
    x[:, 1] = (torch.arange(n) % 256).view(-1, 1, 1)
    x[:, 2] = (torch.arange(n) // 256).view(-1, 1, 1)
    return x


def batches(loader, epoch=0, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start)]


def as_u8(x):
    return (x * 255).round().to(torch.int64)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
def test_crop_is_a_window_of_the_padded_image(mode):
    p, n = 2, 300
    x = index_images(n)
    loader = DeviceLoader(x, torch.zeros(n), 64, device="cpu", shuffle=True, crop_padding=p, pad_mode=mode)
    padded = F.pad(x[:1, :1].float(), (p, p, p, p), mode="constant" if mode == "zeros" else "replicate")[0, 0]
    seen = set()
    for out, _ in loader.epoch(0):
        for img in as_u8(out[:, 0]):
            offsets = [
                (i, j)
                for i in range(2 * p + 1)
                for j in range(2 * p + 1)
                if torch.equal(img, padded[i : i + 8, j : j + 8].long())
            ]
            assert len(offsets) == 1
            seen.add(offsets[0])
    assert len(seen) == (2 * p + 1) ** 2  # every offset in [0, 2p]² occurs


def test_flip_is_mirror():
    x = index_images(200)
    loader = DeviceLoader(x, torch.zeros(200), 50, device="cpu", shuffle=False, flip=True)
    got = torch.cat([as_u8(o) for o, _ in loader.epoch(0)])
    plain, mirror = (got == x).flatten(1).all(1), (got == x.flip(3)).flatten(1).all(1)
    assert bool((plain | mirror).all()) and 60 < int(mirror.sum()) < 140


def test_labels_follow_images_and_permutation_covers_all():
    n = 1000
    x, y = index_images(n), torch.arange(n) % 7
    loader = DeviceLoader(x, y, 128, device="cpu", shuffle=True, crop_padding=2, flip=True)
    ids = []
    for out, lab in loader.epoch(5):
        # Channels 1-2 are constant per image, so the centre pixel survives crop and flip.
        k = as_u8(out[:, 1, 4, 4]) + 256 * as_u8(out[:, 2, 4, 4])
        assert torch.equal(lab, k % 7) and lab.dtype == torch.int64 and out.dtype == torch.float32
        ids.append(k)
    ids = torch.cat(ids)
    assert sorted(ids.tolist()) == list(range(n)) and not torch.equal(ids, torch.arange(n))
    ordered = torch.cat([lab for _, lab in DeviceLoader(x, y, 128, device="cpu", shuffle=False).epoch(0)])
    assert torch.equal(ordered, y)


def test_same_seed_and_epoch_reproduce_and_resume():
    x, y = index_images(300), torch.arange(300)
    make = lambda seed: DeviceLoader(x, y, 32, device="cpu", shuffle=True, crop_padding=3, flip=True, seed=seed)
    a, b = batches(make(1), 2), batches(make(1), 2)
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a, b))
    assert not torch.equal(a[0][1], batches(make(1), 3)[0][1])
    assert not torch.equal(a[0][1], batches(make(2), 2)[0][1])
    loader = make(1)
    for k in (0, 4, len(loader) - 1, len(loader)):
        tail = batches(loader, 2, k)
        assert len(tail) == len(a) - k
        assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a[k:], tail))


def test_normalisation_and_channels_last():
    x = torch.randint(0, 256, (10, 3, 6, 5), dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    out, _ = next(DeviceLoader(x, torch.zeros(10), 10, device="cpu", shuffle=False, mean=mean, std=std).epoch(0))
    ref = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(out, ref, atol=1e-5)
    pixel_mean = x.float().mean(0) / 255
    out, _ = next(DeviceLoader(x, torch.zeros(10), 10, device="cpu", shuffle=False, mean=pixel_mean).epoch(0))
    assert torch.allclose(out, x.float() / 255 - pixel_mean, atol=1e-6)
    cl = DeviceLoader(
        x,
        torch.zeros(10),
        4,
        device="cpu",
        shuffle=True,
        crop_padding=1,
        flip=True,
        mean=mean,
        std=std,
        channels_last=True,
    )
    nchw = DeviceLoader(
        x, torch.zeros(10), 4, device="cpu", shuffle=True, crop_padding=1, flip=True, mean=mean, std=std
    )
    for (a, _), (b, _) in zip(cl.epoch(0), nchw.epoch(0)):
        assert a.is_contiguous(memory_format=torch.channels_last) and a.dtype == torch.float32
        assert torch.equal(a, b)


def test_len_and_drop_last():
    x, y = index_images(10), torch.arange(10)
    assert len(DeviceLoader(x, y, 4, device="cpu", shuffle=True)) == 3
    drop = DeviceLoader(x, y, 4, device="cpu", shuffle=True, drop_last=True)
    assert len(drop) == 2 and [len(b) for _, b in drop.epoch(0)] == [4, 4]
    assert [len(b) for _, b in DeviceLoader(x, y, 4, device="cpu", shuffle=False).epoch(0)] == [4, 4, 2]


@pytest.fixture
def no_host_reads(monkeypatch):
    """Every way a device value reaches Python raises: on a GPU each of these would be a host sync."""

    def refuse(*a, **k):
        raise AssertionError("a device value was read on the host")

    for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_batches_never_read_device_values_on_the_host(no_host_reads):
    x, y = index_images(1000), torch.arange(1000)
    loader = DeviceLoader(
        x,
        y,
        128,
        device="cpu",
        shuffle=True,
        crop_padding=2,
        flip=True,
        mean=[0.5] * 3,
        std=[0.2] * 3,
        channels_last=True,
    )
    out = [xb for xb, _ in loader.epoch(3)]
    assert len(out) == len(loader) == 8


class _Creates:
    """A pickled object whose unpickling would create `path` (a stand-in for any code a crafted file runs)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_cifar_batch_that_names_any_other_callable_is_refused_and_runs_nothing(tmp_path, protocol):
    folder = write_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, _Creates(marker)]}, f, protocol=protocol)
    with pytest.raises(DataError, match=r"data_batch_3 is refused: it names \S+, which is not part of the format"):
        D.load_cifar10(tmp_path, download=False, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_derived_cifar_batches_of_every_pickle_protocol_still_read(tmp_path, protocol):
    folder = write_cifar_folder(tmp_path)
    x = np.full((3, 3072), 7, np.uint8)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": x, "labels": np.array([1, 2, 3]), "batch_label": b"derived"}, f, protocol=protocol)
    s = D.load_cifar10(tmp_path, download=False, verify=False)
    assert len(s.train_y) == 4 * ROWS + 3 and s.train_y[:3].tolist() == [1, 2, 3] and int(s.train_x[0].max()) == 7


def test_a_data_set_with_one_class_or_a_constant_channel_is_refused_before_training():
    from conftest import compose_cfg

    from runner.config import ConfigError, validate
    from runner.engine.build import check_classes, load_splits, normalization

    cfg = validate(compose_cfg("data=synthetic", "data.n_train=100", "data.n_val=20"))
    splits = load_splits(cfg.data, 0)
    with pytest.raises(ConfigError, match=r"^data=synthetic: its 100 training images hold one class or none"):
        check_classes(cfg.data, dataclasses.replace(splits, train_y=torch.zeros_like(splits.train_y)))
    flat = dataclasses.replace(splits, train_x=splits.train_x.clone())
    flat.train_x[:, 1] = 7
    with pytest.raises(ConfigError, match=r"^data.normalize=channel: channel 1 .* constant \(std 0\)"):
        normalization(cfg.data, flat)
    assert min(normalization(cfg.data, splits)[1]) > 0
