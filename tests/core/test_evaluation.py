"""Two evaluations of the same weights (runner.core.evaluation): with BatchNorm's running
statistics, and with statistics recomputed on training images. Recalibration must be exact, must
leave training untouched, and must show what the weights can do when the running statistics lag."""

from contextlib import nullcontext

import pytest
import torch

from runner.core.evaluation import (
    batch_norms,
    evaluate,
    recalibrated_bn,
    recalibration_images,
)
from runner.core.loader import DeviceLoader
from runner.core.models import build_resnet
from runner.engine.step import GraphedForward


def lagging_model(seed=0):
    """ResNet20v1 whose running statistics are far from its weights' (Keras' momentum, after a few
    train steps)."""
    torch.manual_seed(seed)
    model = build_resnet(20, 1, 10, bn_momentum=0.01).double()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32, dtype=torch.float64) * 2 + 1)
    return model


def bn_inputs(model, images):
    """Every BatchNorm's input in one train-mode forward of `images` (the definition, computed
    directly)."""
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
        for m in batch_norms(model)
    ]
    model.train()
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return seen


def test_recalibrated_statistics_are_the_exact_mean_and_variance_of_each_batchnorms_input():
    model = lagging_model()
    images = torch.randn(
        40, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = bn_inputs(model, images)
    model.load_state_dict(before)  # bn_inputs' own forward moved the running statistics
    with recalibrated_bn(model, images, nullcontext()):
        for m, x in zip(batch_norms(model), inputs):
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=True)
            torch.testing.assert_close(m.running_mean, mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m.running_var, var, rtol=1e-12, atol=1e-12)
        # eval mode with these statistics computes what train mode computes on the same images (up
        # to n/(n-1))
        model.eval()
        with torch.no_grad():
            recal_logits = model(images)
        model.train()
        with torch.no_grad():
            batch_logits = model(images)
    torch.testing.assert_close(recal_logits, batch_logits, rtol=1e-3, atol=1e-3)
    for k, v in model.state_dict().items():  # and everything is put back, bit for bit
        assert torch.equal(v, before[k]), k
    assert all(m.momentum == 0.01 for m in batch_norms(model)) and model.training


def test_statistics_come_back_even_when_the_evaluation_inside_fails():
    model = lagging_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with recalibrated_bn(model, torch.randn(8, 3, 32, 32, dtype=torch.float64), nullcontext()):
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_padded_validation_pass_counts_every_image_once():
    """Fixed-shape batches (the last one padded with IGNORE labels) give the plain mean over the
    images."""
    model = lagging_model().eval()
    x = torch.randint(
        0, 256, (23, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    y = torch.arange(23) % 10
    loader = DeviceLoader(x, y, 10, device="cpu", shuffle=False, pad_last=True)
    shapes = {tuple(b.shape) for b, _ in loader.epoch(0)}
    loss, acc = evaluate(model, GraphedForward(model.float(), nullcontext(), capture=False), loader)
    with torch.no_grad():
        logits = model.eval()(x.float() / 255)
    assert shapes == {(10, 3, 32, 32)}
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5
    )
    assert acc.item() == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_recalibration_is_sized_for_the_device_unless_set():
    assert [recalibration_images(None, d) for d in ("cuda", "cpu", "mps")] == [2048, 512, 512]
    assert [recalibration_images(n, "cpu") for n in (0, 2, 4096)] == [0, 2, 4096]
