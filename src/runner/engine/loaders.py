"""What a run sees, on its device: the training batches, the evaluated sets (padded to one batch
shape), the test split when validation is held out of training, and the images BatchNorm's
statistics are recomputed on."""

from __future__ import annotations

import logging

import torch

from runner.config import RunConfig
from runner.core.evaluation import recalibration_images
from runner.core.loader import DeviceLoader, Splits, stratified_subset
from runner.data import normalization
from runner.engine.run import Evaluations, ExecutionPath, Inference, RunData

log = logging.getLogger("runner")
# big batches feed a GPU; on CPU cores batch 100 is ~2x faster
VAL_BATCH = {
    "cuda": 1000,
    "cpu": 100,
}


def run_data(cfg: RunConfig, splits: Splits, path: ExecutionPath) -> RunData:
    d, tr, n_train = cfg.data, cfg.trainer, len(splits.train_y)
    mean, std = normalization(d, splits)
    val_batch = VAL_BATCH.get(path.device.type, 100)

    def loader(x, y, batch_size, **kw) -> DeviceLoader:
        return DeviceLoader(
            x,
            y,
            batch_size,
            device=path.device,
            mean=mean,
            std=std,
            channels_last=path.channels_last,
            **kw,
        )

    def evaluated(x, y) -> DeviceLoader:  # one batch shape: a compiled or captured forward
        return loader(x, y, val_batch, shuffle=False, pad_last=True)

    train = loader(
        splits.train_x,
        splits.train_y,
        cfg.batch_size,
        shuffle=True,
        crop_padding=d.crop_padding,
        flip=d.flip,
        pad_mode=d.pad_mode,
        seed=cfg.seed,
        drop_last=d.drop_last,
    )
    train_eval = None
    if tr.train_eval:  # the same evaluation on a fixed, un-augmented training subset
        keep = stratified_subset(splits.train_y, min(len(splits.val_y), n_train))
        train_eval = evaluated(splits.train_x[keep], splits.train_y[keep])
    test = None if splits.test_y is None else evaluated(splits.test_x, splits.test_y)
    recal = None
    if n_recal := recalibration_images(tr.bn_recalibrate, path.device.type):
        keep = recalibration_subset(splits, n_recal)
        recal = next(
            loader(splits.train_x[keep], splits.train_y[keep], len(keep), shuffle=False).epoch(0)
        )[0]
    return RunData(
        train=train,
        evals=Evaluations(evaluated(splits.val_x, splits.val_y), train_eval),
        test=test,
        recal_images=recal,
        inference=Inference(
            list(splits.classes), d.normalize, mean, std, list(splits.train_x.shape[1:])
        ),
        n_train=n_train,
        n_val=len(splits.val_y),
        fingerprint=splits.fingerprint,
    )


def recalibration_subset(splits: Splits, n: int) -> torch.Tensor:
    """The fixed, stratified training images BatchNorm is recalibrated on (all, when fewer)."""
    if n > len(splits.train_y):
        log.info(
            "trainer.bn_recalibrate=%d: the training set has %d images, recalibrating on all of "
            "them",
            n,
            len(splits.train_y),
        )
    return stratified_subset(splits.train_y, min(n, len(splits.train_y)))


def augmented_recal_images(cfg: RunConfig, splits: Splits, path: ExecutionPath):
    """The recalibration images through one fixed draw of the training augmentation (crop,
    flip): the reference that tells the running statistics' lag from the clean/augmented
    mismatch (probes.bn_staleness). None when recalibration is off."""
    d = cfg.data
    if not (n_recal := recalibration_images(cfg.trainer.bn_recalibrate, path.device.type)):
        return None
    keep = recalibration_subset(splits, n_recal)
    mean, std = normalization(d, splits)
    loader = DeviceLoader(
        splits.train_x[keep],
        splits.train_y[keep],
        len(keep),
        device=path.device,
        shuffle=False,
        crop_padding=d.crop_padding,
        flip=d.flip,
        pad_mode=d.pad_mode,
        mean=mean,
        std=std,
        seed=cfg.seed + 1,
        channels_last=path.channels_last,
    )
    return next(loader.epoch(0))[0]
