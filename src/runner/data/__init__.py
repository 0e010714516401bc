"""Where a run's images come from: the data set `data.source` names, as core.loader.Splits, with the
held-out validation split and the subsets applied, and how its images are normalized.

    cifar10        the official python archive (runner.data.cifar10), downloaded once with its md5
    image_folder   a train/<class>/* + test/<class>/* tree of images (runner.data.image_folder)
    synthetic      a learnable toy set made in memory from the run's seed (runner.data.synthetic)
"""

from __future__ import annotations

import dataclasses

from runner.config import ConfigError, DataConfig
from runner.core.loader import Splits, hold_out, stratified_subset
from runner.data.cifar10 import load_cifar10
from runner.data.image_folder import load_image_folder
from runner.data.synthetic import make_synthetic


def load_splits(d: DataConfig, seed: int, cache: dict | None = None) -> Splits:
    """The configured data set, with the held-out validation split and the subsets applied.
    `cache` (sweeps.pack's) hands out splits already loaded for the same data settings: runs only
    read them, so they may share one copy."""
    key = (repr(d), seed if d.source == "synthetic" else None)  # synthetic: drawn from the seed
    if cache is not None and key in cache:
        return cache[key]
    splits = _source(d, seed)
    check_image_size(d, splits)
    if d.val_split:
        splits = hold_out(splits, d.val_split)
    if d.subset:
        splits = _train_subset(splits, d.subset)
    if d.val_subset:
        splits = _val_subset(splits, d.val_subset)
    check_classes(d, splits)
    if cache is not None:
        cache[key] = splits
    return splits


def _source(d: DataConfig, seed: int) -> Splits:
    if d.source == "cifar10":
        return load_cifar10(d.root, download=d.download, verify=d.verify)
    if d.source == "image_folder":
        return load_image_folder(d.root)
    sizes = {k: v for k, v in (("n_train", d.n_train), ("n_val", d.n_val)) if v is not None}
    return make_synthetic(**sizes, seed=seed)


def _train_subset(splits: Splits, n: int) -> Splits:
    """The first n training images, stratified by class (data.subset)."""
    keep = _stratified(splits.train_y, n, "data.subset", "training")
    return dataclasses.replace(splits, train_x=splits.train_x[keep], train_y=splits.train_y[keep])


def _val_subset(splits: Splits, n: int) -> Splits:
    """The first n validation images, stratified by class (data.val_subset): the same ones at
    every validation."""
    keep = _stratified(splits.val_y, n, "data.val_subset", "validation")
    return dataclasses.replace(splits, val_x=splits.val_x[keep], val_y=splits.val_y[keep])


def _stratified(labels, n: int, key: str, which: str):
    if n > len(labels):
        raise ConfigError(
            f"{key}={n} is larger than the {len(labels)} {which} images: lower it or use {key}=null"
        )
    return stratified_subset(labels, n)


IMAGE_SIZE = (32, 32)  # the ResNets' head pools the last stage's 8x8 map of a 32x32 image


def check_image_size(d: DataConfig, splits: Splits) -> None:
    """Images of another size are refused before a model sees them: the ResNets here are CIFAR's
    (Keras' cifar10_resnet.py), whose head pools an 8x8 map, so only 32x32 images fit."""
    size = tuple(splits.train_x.shape[2:])
    if size != IMAGE_SIZE or tuple(splits.val_x.shape[2:]) != IMAGE_SIZE:
        where = f"data.root={d.root!r}" if d.source == "image_folder" else f"data={d.source}"
        raise ConfigError(
            f"{where}: its images are {size[0]}x{size[1]}, and the ResNets here take CIFAR's "
            "32x32 (their head pools an 8x8 map): resize the images to 32x32 first"
        )


def check_classes(d: DataConfig, splits: Splits) -> None:
    """A training set of one class is refused: every prediction would be right, and accuracy 1.0
    would mean nothing."""
    if splits.train_y.unique().numel() < 2:
        raise ConfigError(
            f"data={d.name or d.source}: its {len(splits.train_y)} training images hold one class "
            "or none: give a data set with two or more classes (and a data.subset large enough "
            "to keep them)"
        )


def normalization(d: DataConfig, splits: Splits):
    """(mean, std) for the loaders: per channel, Keras' per-pixel mean image (no division), or
    none. x = (RGB uint8 / 255 − mean) / std."""
    if d.normalize == "channel":
        mean, std = splits.train_channel_stats
        flat = [c for c, s in enumerate(std) if s < 1e-6]  # a grey level is 1/255: 1e-6 is 0
        if flat:  # (x − mean)/0 is not a number: the first step would diverge
            raise ConfigError(
                f"data.normalize=channel: channel {flat[0]} of the {len(splits.train_y)} training "
                "images is constant (std 0), so it cannot be divided by its std: use "
                "data.normalize=pixel_mean or none"
            )
        return mean, std
    if d.normalize == "pixel_mean":
        return splits.train_pixel_mean, None
    return None, None
