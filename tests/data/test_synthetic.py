"""runner.data.synthetic: a learnable toy set made in memory."""

import torch

import runner.data.synthetic as D


def test_synthetic_deterministic_balanced_not_trivial():
    a, b = D.make_synthetic(seed=3), D.make_synthetic(seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, D.make_synthetic(seed=4).train_x)
    assert (
        a.train_x.shape == (2000, 3, 32, 32)
        and a.train_x.dtype == torch.uint8
        and a.val_x.shape[0] == 500
    )
    assert torch.bincount(a.train_y).tolist() == [200] * 10 and a.classes == D.CLASSES
    # Class patterns appear at random shifts, so a nearest-class-mean classifier stays near chance.
    x, v = a.train_x.flatten(1).float(), a.val_x.flatten(1).float()
    means = torch.stack([x[a.train_y == c].mean(0) for c in range(10)])
    assert (torch.cdist(v, means).argmin(1) == a.val_y).float().mean() < 0.35
    assert D.make_synthetic(10, 6, num_classes=3, image_size=16).train_x.shape == (10, 3, 16, 16)
