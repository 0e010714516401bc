"""runner.core.loader: subsets, held-out splits, channel statistics and the on-device loader."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import runner.core.loader as D
from runner.core.loader import DataError, DeviceLoader


def test_stratified_subset_round_robin():
    labels = torch.tensor([2, 0, 0, 1, 0, 2, 1, 0, 2])
    assert D.stratified_subset(labels, 4).tolist() == [0, 1, 2, 3]  # 0@1, 1@3, 2@0, then 0@2
    idx = D.stratified_subset(labels, 7)
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 6] and torch.bincount(labels[idx]).tolist() == [
        3,
        2,
        2,
    ]
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
    assert ids(h.val_x) == [88, 92, 94, 95, 96, 97, 98, 99] and h.val_y.tolist() == [
        0,
        0,
        1,
        2,
        0,
        1,
        1,
        2,
    ]
    assert (
        ids(h.train_x) == [i for i in range(100) if i not in ids(h.val_x)]
        and h.classes == s.classes
    )
    assert torch.equal(h.train_y, y[torch.tensor(ids(h.train_x))]) and h.train_x.is_contiguous()
    with pytest.raises(DataError, match="data.val_split"):
        D.hold_out(s, 100)


def test_channel_stats():
    x = torch.randint(0, 256, (50, 3, 5, 4), dtype=torch.uint8)
    mean, std = D.channel_stats(x)
    f = x.double() / 255
    assert np.allclose(mean, f.mean((0, 2, 3))) and np.allclose(
        std, f.std((0, 2, 3), unbiased=False)
    )


# ---------------------------------------------------------------- loader


def index_images(n, h=8, w=8):
    """Image k: channel 0 = 1 + position (row*w + col), channel 1 = k % 256, channel 2 = k //
    256."""
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
    loader = DeviceLoader(
        x, torch.zeros(n), 64, device="cpu", shuffle=True, crop_padding=p, pad_mode=mode
    )
    padded = F.pad(
        x[:1, :1].float(), (p, p, p, p), mode="constant" if mode == "zeros" else "replicate"
    )[0, 0]
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
    ordered = torch.cat(
        [lab for _, lab in DeviceLoader(x, y, 128, device="cpu", shuffle=False).epoch(0)]
    )
    assert torch.equal(ordered, y)


def test_same_seed_and_epoch_reproduce_and_resume():
    x, y = index_images(300), torch.arange(300)
    make = lambda seed: DeviceLoader(
        x, y, 32, device="cpu", shuffle=True, crop_padding=3, flip=True, seed=seed
    )
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
    out, _ = next(
        DeviceLoader(x, torch.zeros(10), 10, device="cpu", shuffle=False, mean=mean, std=std).epoch(
            0
        )
    )
    ref = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(out, ref, atol=1e-5)
    pixel_mean = x.float().mean(0) / 255
    out, _ = next(
        DeviceLoader(x, torch.zeros(10), 10, device="cpu", shuffle=False, mean=pixel_mean).epoch(0)
    )
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
        x,
        torch.zeros(10),
        4,
        device="cpu",
        shuffle=True,
        crop_padding=1,
        flip=True,
        mean=mean,
        std=std,
    )
    for (a, _), (b, _) in zip(cl.epoch(0), nchw.epoch(0)):
        assert a.is_contiguous(memory_format=torch.channels_last) and a.dtype == torch.float32
        assert torch.equal(a, b)


def test_len_and_drop_last():
    x, y = index_images(10), torch.arange(10)
    assert len(DeviceLoader(x, y, 4, device="cpu", shuffle=True)) == 3
    drop = DeviceLoader(x, y, 4, device="cpu", shuffle=True, drop_last=True)
    assert len(drop) == 2 and [len(b) for _, b in drop.epoch(0)] == [4, 4]
    assert [len(b) for _, b in DeviceLoader(x, y, 4, device="cpu", shuffle=False).epoch(0)] == [
        4,
        4,
        2,
    ]


@pytest.fixture
def no_host_reads(monkeypatch):
    """Every way a device value reaches Python raises: on a GPU each of these would be a host
    sync."""

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


def test_an_epoch_counts_the_remainder_as_a_batch_unless_dropped():
    assert (
        D.batches_per_epoch(500, 64, drop_last=True) == 7
        and D.batches_per_epoch(500, 64, drop_last=False) == 8
    )
