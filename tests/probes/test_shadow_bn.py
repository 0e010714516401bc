"""Shadow BatchNorm statistics (probes.shadow_bn) on a synthetic drift, against probes.theory's EMA
lag."""

import pytest
import torch
from torch import nn

from runner.probes.shadow_bn import (
    MOMENTA,
    batch_from_running,
    batch_moments,
    shadow_stack,
    update_noise,
    update_shadows,
)
from runner.probes.theory import ema_lag_path, ema_noise_var


def test_the_batch_statistics_come_back_out_of_the_running_buffers():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8, momentum=0.01).train()
    for _ in range(3):
        x = torch.randn(16, 8, 4, 4) * 3 + 1
        old_mean, old_var = bn.running_mean.clone(), bn.running_var.clone()
        bn(x)
        mean, var = batch_moments(x)
        assert torch.allclose(batch_from_running(old_mean, bn.running_mean, 0.01), mean, atol=1e-4)
        assert torch.allclose(batch_from_running(old_var, bn.running_var, 0.01), var, rtol=1e-4)


def test_one_update_follows_torch_s_rule_row_by_row():
    mean, var = shadow_stack((0.5, 0.1), 3)
    assert mean.shape == (2, 3) and var.eq(1).all()
    out = update_shadows(mean, torch.tensor([2.0, 4.0, -2.0]), (0.5, 0.1))
    assert torch.allclose(out, torch.tensor([[1.0, 2.0, -1.0], [0.2, 0.4, -0.2]]))


def test_shadows_on_a_noisy_linear_drift_lag_as_the_theory_says():
    """x_j = r·j per channel, each batch seeing it with noise σ; at a validation after s batches the
    stack trails x_s by (1 − q^s)·r/m on average and scatters around it with variance σ²·m/(2 −
    m)."""
    torch.manual_seed(0)
    channels, r, sigma, s = 4000, 1e-3, 0.05, 3000
    momenta = (*MOMENTA, 0.01)
    stack, _ = shadow_stack(momenta, channels)
    for j in range(s):
        stack = update_shadows(stack, r * j + sigma * torch.randn(channels), momenta)
    lag = r * s - stack  # the exact statistic of the weights after s updates, minus each EMA
    for row, m in enumerate(momenta):
        expected = ema_lag_path([0, s], [0.0, r * s], m, 0.0)[1]  # (1 − q^s)·r/m
        noise = ema_noise_var(sigma**2, m, s)
        assert lag[row].mean().item() == pytest.approx(expected, abs=4 * (noise / channels) ** 0.5)
        assert lag[row].var().item() == pytest.approx(noise, rel=0.1)
    slow = ema_lag_path([0, s], [0.0, r * s], 0.001, 0.0)[1]
    assert slow == pytest.approx(0.95 * r / 0.001, rel=0.01)  # m = 0.001 still 5 % short of r/m


def test_the_batch_noise_comes_from_successive_batches():
    torch.manual_seed(1)
    channels, r, sigma = 2000, 1e-3, 0.05
    noise, prev = torch.zeros(channels), torch.zeros(channels)
    for j in range(2000):
        batch = r * j + sigma * torch.randn(channels)
        if j:
            noise = update_noise(noise, batch, prev)
        prev = batch
    assert noise.mean().item() == pytest.approx(sigma**2 + r**2 / 2, rel=0.05)
