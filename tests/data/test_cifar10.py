"""runner.data.cifar10: the official archive's download, checksums and batches, read by an unpickler
that runs no code."""

import hashlib
import pickle
import shutil
import socket
import tarfile

import numpy as np
import pytest
import torch
from conftest import Creates, run_cli

import runner.data.cifar10 as D
from runner.core.loader import DataError

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
            pickle.dump(
                {b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {b"label_names": [c.encode() for c in D.CLASSES], b"num_vis": 3072}, f, protocol=2
        )
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
    assert (
        "data_batch_1" in msg
        and D.CIFAR10_MD5["data_batch_1"] in msg
        and "data.verify=false" in msg
    )


def test_cifar_truncated_file(tmp_path):
    path = write_cifar_folder(tmp_path) / "data_batch_3"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_3"):
        D.load_cifar10(tmp_path, download=False, verify=False)


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path, download=False)
    assert str(tmp_path / D.CIFAR10_FOLDER) in str(e.value) and "data.download=true" in str(e.value)
    assert "data=image_folder data.root=DIR" in str(e.value) and "debug=smoke" in str(e.value)


def test_cifar_download_unreachable(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{D.CIFAR10_ARCHIVE}"
    monkeypatch.setattr(D, "CIFAR10_URL", url)
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path, download=True)
    assert url in str(e.value) and "failed" in str(e.value) and D.CIFAR10_ARCHIVE in str(e.value)
    # and what works without the network
    assert "data=image_folder data.root=DIR" in str(e.value) and "debug=smoke" in str(e.value)
    assert not (tmp_path / D.CIFAR10_ARCHIVE).exists()
    with pytest.raises(DataError):  # a data.root the download made goes with the failed download
        D.load_cifar10(tmp_path / "new" / "root", download=True)
    assert not (tmp_path / "new").exists() and tmp_path.is_dir()


@pytest.mark.slow
def test_the_first_command_offline_ends_in_what_works_without_the_network(tmp_path):
    """`make run` (python -m runner, the defaults) where CIFAR-10 cannot be downloaded: one line
    that names the offline options, and nothing left behind."""
    with socket.socket() as sock:  # a proxy port nothing listens on: every download fails at once
        sock.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {"RUNNER_DATA": str(tmp_path / "data"), "https_proxy": proxy, "HTTPS_PROXY": proxy}
    r = run_cli([], cwd=tmp_path, env_extra={**env, "no_proxy": "", "NO_PROXY": ""})
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("runner: error: Downloading CIFAR-10"), r.stderr
    assert "`python -m runner data=image_folder data.root=DIR`" in last
    assert "`python -m runner debug=smoke`" in last
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "data").exists()


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
    monkeypatch.setattr(
        D, "_download", lambda url, root, filename: shutil.copy(archive, root / filename)
    )
    monkeypatch.setattr(D, "CIFAR10_ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DataError, match="0{32}") as e:
        D.load_cifar10(tmp_path / "root", download=True, verify=True)
    assert D.CIFAR10_ARCHIVE in str(e.value)


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_cifar_batch_that_names_any_other_callable_is_refused_and_runs_nothing(
    tmp_path, protocol
):
    folder = write_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump(
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, Creates(marker)]},
            f,
            protocol=protocol,
        )
    with pytest.raises(
        DataError, match=r"data_batch_3 is refused: it names \S+, which is not part of the format"
    ):
        D.load_cifar10(tmp_path, download=False, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_derived_cifar_batches_of_every_pickle_protocol_still_read(tmp_path, protocol):
    folder = write_cifar_folder(tmp_path)
    x = np.full((3, 3072), 7, np.uint8)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump(
            {"data": x, "labels": np.array([1, 2, 3]), "batch_label": b"derived"},
            f,
            protocol=protocol,
        )
    s = D.load_cifar10(tmp_path, download=False, verify=False)
    assert (
        len(s.train_y) == 4 * ROWS + 3
        and s.train_y[:3].tolist() == [1, 2, 3]
        and int(s.train_x[0].max()) == 7
    )


# ---------------------------------------------------------------- values that would change the data


def rewrite(path, **entries):
    """Replace entries of one CIFAR pickle (bytes keys, as the format has them)."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d.update({k.encode(): v for k, v in entries.items()})
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.mark.parametrize("labels", [[2.7] * ROWS, ["3"] * ROWS, [True] * ROWS])
def test_labels_that_are_not_whole_numbers_are_refused_not_rounded(tmp_path, labels):
    folder = write_cifar_folder(tmp_path)
    rewrite(folder / "data_batch_3", labels=labels)
    with pytest.raises(DataError, match="data_batch_3: 'labels' must be a list of whole numbers"):
        D.load_cifar10(tmp_path, download=False, verify=False)


def test_class_names_given_twice_are_refused(tmp_path):
    folder = write_cifar_folder(tmp_path)
    names = [c.encode() for c in D.CLASSES[:9]] + [b"cat"]
    rewrite(folder / "batches.meta", label_names=names)
    with pytest.raises(DataError, match=r"names the classes \['cat'\] more than once"):
        D.load_cifar10(tmp_path, download=False, verify=False)
