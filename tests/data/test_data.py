"""runner.data: the data set a config names, its subsets and its normalization."""

import dataclasses

import pytest
import torch


def test_a_data_set_with_one_class_or_a_constant_channel_is_refused_before_training():
    from conftest import compose_cfg

    from runner.config import ConfigError, validate
    from runner.data import check_classes, load_splits, normalization

    cfg = validate(compose_cfg("data=synthetic", "data.n_train=100", "data.n_val=20"))
    splits = load_splits(cfg.data, 0)
    with pytest.raises(
        ConfigError, match=r"^data=synthetic: its 100 training images hold one class or none"
    ):
        check_classes(
            cfg.data, dataclasses.replace(splits, train_y=torch.zeros_like(splits.train_y))
        )
    flat = dataclasses.replace(splits, train_x=splits.train_x.clone())
    flat.train_x[:, 1] = 7
    with pytest.raises(
        ConfigError, match=r"^data.normalize=channel: channel 1 .* constant \(std 0\)"
    ):
        normalization(cfg.data, flat)
    assert min(normalization(cfg.data, splits)[1]) > 0


def test_data_val_subset_validates_on_the_same_stratified_images_every_time():
    from runner.config import ConfigError, DataConfig
    from runner.data import load_splits

    full = load_splits(DataConfig(n_train=100, n_val=100), seed=0)
    a = load_splits(DataConfig(n_train=100, n_val=100, val_subset=20), seed=0)
    b = load_splits(DataConfig(n_train=100, n_val=100, val_subset=20), seed=0)
    assert (
        len(a.val_y) == 20
        and torch.equal(a.val_x, b.val_x)
        and torch.equal(a.train_x, full.train_x)
    )
    assert torch.bincount(a.val_y, minlength=10).tolist() == [2] * 10  # stratified: 2 per class
    with pytest.raises(
        ConfigError, match=r"^data.val_subset=101 is larger than the 100 validation images"
    ):
        load_splits(DataConfig(n_train=100, n_val=100, val_subset=101), seed=0)


def test_images_that_are_not_32x32_are_refused_before_a_model_sees_them(tmp_path):
    """The ResNets' head pools an 8x8 map: a folder of 8x6 images is named with its size and the
    fix, not left to fail inside the model's pooling."""
    import numpy as np
    from PIL import Image

    from runner.config import ConfigError, DataConfig
    from runner.data import load_splits

    for split, c in [(s, c) for s in ("train", "test") for c in ("ant", "bee")]:
        (tmp_path / "images" / split / c).mkdir(parents=True)
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(
            tmp_path / "images" / split / c / "0.png"
        )
    d = DataConfig(source="image_folder", root=str(tmp_path / "images"))
    with pytest.raises(ConfigError, match=r"images are 6x8, .* resize the images to 32x32"):
        load_splits(d, 0)
