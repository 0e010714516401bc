"""The splits of a data set in memory and the on-device batch loader: tensors in, tensors out.

Conventions: images are uint8 tensors (N, 3, H, W), contiguous, on the CPU; labels are int64 (N,).
`Splits.val_*` is the test split unless `hold_out` replaced it. The `DeviceLoader` keeps a split
on one device and does shuffling, augmentation and normalisation there in batched tensor ops.
Where the images come from (downloads, files, caches) is runner.data's job; nothing here does I/O.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from runner.config import UserError

IGNORE = -100  # the label of a padding image: F.cross_entropy's default ignore_index


class DataError(UserError, ValueError):
    """A data set is missing, malformed or fails its checksum; the message says how to fix it."""


@dataclass
class Splits:
    train_x: torch.Tensor  # uint8 (N, 3, H, W), contiguous, CPU
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    test_x: torch.Tensor | None = (
        None  # the test split when `hold_out` made val_* from training images
    )
    test_y: torch.Tensor | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the images and labels of both splits, in order: which
        data a run saw. Computed once per Splits, like `train_channel_stats`: the runs of a pack
        share one Splits."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.val_x, self.val_y):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @functools.cached_property
    def train_channel_stats(self) -> tuple[list[float], list[float]]:
        """channel_stats(train_x): about a second for CIFAR-10's 50,000 images, so once per
        Splits."""
        return channel_stats(self.train_x)

    @functools.cached_property
    def train_pixel_mean(self) -> torch.Tensor:
        """The mean training image on [0, 1] (Keras' per-pixel mean), (C, H, W): a float copy of the
        whole set, so once per Splits (the loaders, the test split and best.pt's inference settings
        all ask for it)."""
        return self.train_x.float().div(255).mean(0)


def stratified_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted indices of n samples: round-robin over classes (ascending label), each class's
    samples in original order, classes that run out skipped. Deterministic."""
    labels = labels.cpu()
    if not 0 < n <= len(labels):
        raise DataError(
            f"data.subset / data.val_split must be between 1 and the {len(labels)} training "
            f"images; got {n}."
        )
    order = torch.argsort(labels, stable=True)  # grouped by class, original order within
    rank = torch.empty_like(order)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank[order] = torch.arange(len(labels)) - starts[labels[order]]  # position within own class
    key = rank * (int(labels.max()) + 1) + labels  # sort by (rank, class) = round-robin
    return torch.sort(torch.argsort(key, stable=True)[:n]).values


def hold_out(splits: Splits, n: int) -> Splits:
    """Replace the val split by the last n training images, stratified (round-robin from the end);
    the old val split (the test split) becomes test_*."""
    if n >= len(splits.train_y):
        raise DataError(
            f"data.val_split={n} leaves no training images (there are {len(splits.train_y)}); "
            "choose a smaller value."
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
        # the test split stays, for the test accuracy of the final and the selected weights
        splits.val_x,
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


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches of one epoch over n images: full ones only under drop_last, else one more for the
    remainder (the loader's length, and the plan's steps per epoch)."""
    return n // batch_size if drop_last else -(-n // batch_size)


# ---------------------------------------------------------------- loader


def _check(images_u8, labels, batch_size: int, crop_padding: int, pad_mode: str, drop_last: bool):
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or len(images_u8) != len(labels):
        raise DataError(
            f"DeviceLoader expects uint8 images (N, C, H, W) and N labels; got "
            f"{images_u8.dtype} {tuple(images_u8.shape)} and {len(labels)} labels."
        )
    if pad_mode not in ("zeros", "replicate"):
        raise DataError(f"data.pad_mode must be 'zeros' or 'replicate'; got {pad_mode!r}.")
    if batch_size < 1 or crop_padding < 0:
        raise DataError(
            f"batch size must be ≥ 1 and data.crop_padding ≥ 0; got {batch_size}, {crop_padding}."
        )
    if drop_last and len(labels) < batch_size:
        raise DataError(
            f"{len(labels)} images make no full batch of {batch_size}: lower batch_size or use "
            f"data.drop_last=false."
        )


def _padded(x: torch.Tensor, p: int, pad_mode: str) -> torch.Tensor:
    """The split padded once by p pixels a side: every crop is then a window of it (1.56× the
    memory at p = 4)."""
    if not p:
        return x
    if pad_mode == "zeros":
        return F.pad(x, (p, p, p, p))
    # replicate: clamp the source rows and columns (uint8 has no replication pad kernel)
    h, w = x.shape[2:]
    rows = torch.arange(-p, h + p, device=x.device).clamp(0, h - 1)
    cols = torch.arange(-p, w + p, device=x.device).clamp(0, w - 1)
    return x[:, :, rows][:, :, :, cols].contiguous()


F32 = torch.float32


def _affine(mean, std, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x · scale + shift = (x / 255 − mean) / std; mean per channel or a
    (C, H, W) image, None = 0; std per channel, None = 1."""
    m = torch.zeros(channels) if mean is None else torch.as_tensor(mean, dtype=F32, device="cpu")
    s = torch.ones(channels) if std is None else torch.as_tensor(std, dtype=F32, device="cpu")
    m = m.view(1, *m.shape) if m.ndim == 3 else m.view(1, -1, 1, 1)
    s = s.view(1, -1, 1, 1)
    return (1 / (255 * s)).to(device), (-m / s).to(device)


class DeviceLoader:
    """The whole split on one device as uint8; batches are shuffled, augmented and normalised there
    in a few batched tensor ops, never image by image.

    Every random draw of epoch e (permutation, crop offsets in [0, 2p], flips) comes up front from a
    generator seeded by (seed, e), so `epoch(e, start_step=k)` yields exactly the batches k, k+1,
    ... of an uninterrupted `epoch(e)`. Batches are float32 on [0, 1], then `(x - mean) / std`;
    mean/std are per-channel lists on the [0, 1] scale, or mean a (C, H, W) tensor with std None for
    per-pixel mean subtraction. The iteration never synchronises with the host.

    `drop_last`: every batch is full (the permutation's last len % batch_size images wait for
    another epoch). `pad_last`: the last batch is filled up to batch_size by repeating its last
    image, labelled IGNORE (which F.cross_entropy and an argmax comparison both skip), so a
    validation pass has one shape throughout.
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
        _check(images_u8, labels, batch_size, crop_padding, pad_mode, drop_last)
        self.device = torch.device(device)
        self.x = images_u8.to(self.device).contiguous()
        self.y = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.flip = batch_size, shuffle, flip
        self.crop_padding, self.pad_mode, self.seed = crop_padding, pad_mode, seed
        self.drop_last, self.pad_last, self.channels_last = drop_last, pad_last, channels_last
        self._layout = torch.channels_last if channels_last else torch.contiguous_format
        self.xp = _padded(self.x, crop_padding, pad_mode)
        if flip:  # a mirrored copy next to the originals: crop and flip become one gather
            self.xp = torch.cat([self.xp, self.xp.flip(3)])
        # /255, −mean and /std folded into one multiply and one subtract
        self.scale, self.neg_shift = _affine(mean, std, self.x.shape[1], self.device)

    def __len__(self) -> int:
        return batches_per_epoch(len(self.y), self.batch_size, self.drop_last)

    def _generator(self, epoch: int) -> torch.Generator:
        key = hashlib.sha256(f"DeviceLoader:{self.seed}:{epoch}".encode()).digest()
        return torch.Generator(device=self.device).manual_seed(
            int.from_bytes(key[:8], "little") >> 1
        )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images float32 (B, C, H, W), labels int64 (B,)) for steps start_step..len-1."""
        n, (h, w), p, dev = len(self.y), self.x.shape[2:], self.crop_padding, self.device
        g = self._generator(epoch)
        order = (
            torch.randperm(n, generator=g, device=dev)
            if self.shuffle
            else torch.arange(n, device=dev)
        )
        # crop offset in the padded image
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g, device=dev)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g, device=dev)
        mirror = torch.rand(n, generator=g, device=dev) < 0.5
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must lie in [0, {len(self)}]; got {start_step}.")
        # the mirror of the crop at dx is the crop at 2p - dx of the mirrored copy (index + n)
        if self.flip:
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
            # one batch shape for a compiled or captured forward
            if self.pad_last and hi - lo < self.batch_size:
                fill = self.batch_size - (hi - lo)
                idx, src, oy, ox = (torch.cat([t, t[-1:].expand(fill)]) for t in (idx, src, oy, ox))
                labels = torch.cat([labels, labels.new_full((fill,), IGNORE)])
            # crop, flip and batch in one gather of whole windows (validation: a plain gather)
            xb = windows[src, :, oy, ox] if p or self.flip else self.x[idx]
            # cast, normalise and (channels_last) change layout in one kernel, writing straight into
            # the layout
            out = torch.empty(xb.shape, device=dev, memory_format=self._layout)
            yield torch.addcmul(self.neg_shift, xb, self.scale, out=out), labels
