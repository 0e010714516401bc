"""Evaluation in eval mode, with BatchNorm's running statistics or with statistics recomputed on
training images.

Two numbers answer "how good are these weights?", and they can disagree by tens of points:
  running      eval mode with each BatchNorm's running statistics (momentum 0.01 = Keras' 0.99).
               This is what Keras' model.evaluate and torch's model.eval() report. The running
               averages lag behind weights that move fast (strong decoupled decay, a high lr, the
               first few hundred steps), so this loss oscillates and understates the model
               (docs/results/2026-11-28-h200).
  recalibrated the same evaluation after every BatchNorm's statistics are recomputed exactly over
               a fixed set of un-augmented training images (`recalibrated_bn`), then restored,
               so training never sees it.

Recalibration runs the whole set through the model in train mode as ONE batch with momentum 1: each
BatchNorm's running mean/var become the exact mean and unbiased variance of its input over the set,
and each layer's input is the one it gets when every layer before it normalises with the set's own
statistics, which is what eval mode with the recalibrated statistics computes too (up to var's
n/(n−1)).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from runner.core.loader import IGNORE


@torch.no_grad()
def evaluate(model: nn.Module, forward, loader, on_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, accuracy) over the loader's images as device tensors. `forward(x)` gives the
    logits (eager under autocast, or a GraphedForward); padding labelled IGNORE counts for neither.
    `on_batch()`, if given, is called after each batch is launched (a progress bar; it does not wait
    for the device)."""
    model.eval()
    loss_sum = correct = 0
    for x, y in loader.epoch(0):
        logits = forward(x).float()
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum", ignore_index=IGNORE)
        correct = correct + (logits.argmax(1) == y).sum()
        if on_batch is not None:
            on_batch()
    model.train()
    n = len(loader.y)
    return loss_sum / n, correct.float() / n


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_statistics(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(running_mean, running_var) of every BatchNorm of `model`, copied, in module order."""
    return [
        (m.running_mean.detach().clone(), m.running_var.detach().clone())
        for m in batch_norms(model)
    ]


RECALIBRATION_IMAGES = {"cuda": 2048, "other": 512}


def recalibration_images(setting: int | None, device_type: str) -> int:
    """How many images recalibration uses (trainer.bn_recalibrate; 0 = off). Null sizes it for the
    device: a GPU passes 2,048 images in milliseconds, a CPU in seconds (a forward pass costs about
    a third of a training step's forward and backward), so it takes 512 there. The
    statistics of n images scatter about the training set's as 1/√n: 512 doubles the scatter of
    2,048; summary.json records the number used (data.n_recalibrate)."""
    if setting is not None:
        return setting
    return RECALIBRATION_IMAGES["cuda" if device_type == "cuda" else "other"]


@contextmanager
def recalibrated_bn(model: nn.Module, images: torch.Tensor, autocast):
    """Inside the block every BatchNorm of `model` holds the exact statistics of its input over
    `images` (normalised training images, one batch); on leaving, the running statistics are put
    back bit for bit, so training goes on as if nothing had happened. `model` must be the eager
    module (not torch.compile's wrapper: the momentum change would recompile it)."""
    norms = batch_norms(model)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in norms]
    try:
        for m in norms:
            m.momentum = 1.0  # running statistics ← this batch's statistics, exactly
        model.train()
        with torch.no_grad(), autocast:
            model(images)
        for m, (_, _, momentum) in zip(norms, saved):
            m.momentum = momentum
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, momentum) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.momentum = momentum
        model.train()
