"""A small learnable data set made in memory, for demos and tests."""

from __future__ import annotations

import math

import torch

from runner.core.loader import Splits
from runner.data.cifar10 import CLASSES


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
    # one of each ±k pair: frequencies 1..2 cycles per image
    half = (ky > 0) | ((ky == 0) & (kx > 0))
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
