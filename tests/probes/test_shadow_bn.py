"""Shadow BatchNorm statistics (probes.shadow_bn) on a synthetic drift, against probes.theory's EMA
lag: the pure updates, then the probe on a BatchNorm whose input drifts at a known rate."""

import math
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from runner.core.evaluation import bn_statistics
from runner.probes import StepPoint, Subject, ValidationPoint
from runner.probes.bn_staleness import AugmentedReference
from runner.probes.shadow_bn import (
    ShadowBN,
    batch_from_running,
    shadow_stack,
    update_noise,
    update_shadows,
)
from runner.probes.theory import ema_lag_path, ema_noise_var

MOMENTA = (0.001, 0.003, 0.03, 0.3)


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel of an (N, C, ...) input: the mean and unbiased variance BatchNorm folds in."""
    dims = [d for d in range(x.ndim) if d != 1]
    return x.mean(dims), x.var(dims, unbiased=True)


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


class Drifting(nn.Module):
    """One BatchNorm whose input is the images plus an offset the test moves: the exact mean of its
    input drifts at a rate the test sets."""

    STAGES = ("s",)

    def __init__(self, channels: int, momentum: float):
        super().__init__()
        self.s = nn.Sequential(nn.BatchNorm1d(channels, momentum=momentum))
        self.register_buffer("offset", torch.zeros(channels))

    def forward(self, x):
        return self.s(x + self.offset)


def probe_of(model, momenta, reference_images, batch_size):
    subject = Subject(model, None, None, nullcontext(), {}, lambda: reference_images, batch_size)
    return ShadowBN(subject, momenta, AugmentedReference(subject))


def validation(probe, model, step):
    zero = lambda: (torch.tensor(0.0), torch.tensor(1.0))
    point = ValidationPoint(step, bn_statistics(model), None, zero)
    return {k: v.item() for k, v in probe.at_validation(point).items()}


def test_each_shadow_row_is_torch_s_running_average_at_its_own_momentum():
    torch.manual_seed(0)
    model = Drifting(6, 0.1).train()
    probe = probe_of(model, (0.5, 0.02), None, 8)
    expected = shadow_stack((0.5, 0.02), 6)
    for k in range(30):
        x = torch.randn(8, 6) * 2 + k * 0.1
        model(x)
        probe.after_step(StepPoint(k + 1, False, False))
        mean, var = batch_moments(x)
        expected = (
            update_shadows(expected[0], mean, (0.5, 0.02)),
            update_shadows(expected[1], var, (0.5, 0.02)),
        )
    assert torch.allclose(probe.shadow[0], expected[0], atol=1e-5)
    assert torch.allclose(probe.shadow[1], expected[1], rtol=1e-4)


def test_shadow_evaluations_swap_each_set_in_and_put_the_buffers_back():
    model = Drifting(3, 0.1).train()
    probe = probe_of(model, (0.5, 0.25), None, 4)
    for k in range(4):
        model(torch.randn(4, 3) + 5)
        probe.after_step(StepPoint(k + 1, False, False))
    before = bn_statistics(model)
    seen = []
    point = ValidationPoint(
        4,
        before,
        None,
        lambda: seen.append(bn_statistics(model)[0]) or (torch.tensor(float(len(seen))),) * 2,
    )
    f = probe.at_validation(point)
    assert [f["val_loss_shadow@0.5"].item(), f["val_loss_shadow@0.25"].item()] == [1.0, 2.0]
    assert torch.equal(seen[0][0], probe.shadow[0, 0]) and torch.equal(
        seen[1][1], probe.shadow[1, 1]
    )
    after = bn_statistics(model)
    assert all(torch.equal(a, b) for x, y in zip(before, after) for a, b in zip(x, y))
    assert not any(k.startswith("bn_") for k in f)  # no reference images: no chain figures


def test_on_a_linear_drift_the_probe_measures_the_lag_the_theory_predicts():
    """The exact mean moves at r per step from 0; each batch sees it with noise σ/√B per channel. At
    validations every 50 steps the lag of every EMA, measured against the reference images' exact
    mean, is r/m·(1 − q^s) on average (theory.ema_lag_path), scattered by the EMA's noise floor and
    the reference's own sampling error; the drift reads r."""
    torch.manual_seed(0)
    channels, r, sigma, batch, every, steps = 2000, 2e-3, 1.0, 16, 50, 600
    model = Drifting(channels, 0.01).train()
    reference = torch.randn(256, channels) * sigma
    probe = probe_of(model, (0.3, 0.03), reference, batch)
    records = {}
    for k in range(steps):
        model.offset.fill_(r * k)  # the batch of step k sees the weights before its update
        model(torch.randn(batch, channels) * sigma)
        probe.after_step(StepPoint(k + 1, False, False))
        if (k + 1) % every == 0:
            model.offset.fill_(r * (k + 1))  # the validation sees the weights after it
            records[k + 1] = validation(probe, model, k + 1)
    assert "bn_lag_pred_rms" not in records[every] and "bn_drift_mu/s" not in records[every]
    last = records[steps]
    assert last["bn_drift_mu/s"] == pytest.approx(r / sigma, rel=0.02)
    assert last["bn_shadow_batches"] == steps
    assert last["bn_eps_share/s"] == pytest.approx(1e-5, rel=0.1)  # BatchNorm1d's ε over var ≈ 1
    # the reference's mean over N_ref images: σ/√N_ref, in units of σ
    assert last["bn_ref_noise_rms/s"] == pytest.approx(1 / math.sqrt(len(reference)), rel=0.15)
    for sfx, m in (("", 0.01), ("@0.3", 0.3), ("@0.03", 0.03)):
        expected = ema_lag_path([0, steps], [0.0, r * steps], m, 0.0)[1] / sigma
        assert last[f"bn_lag_pred_rms{sfx}"] == pytest.approx(expected, rel=0.05), sfx
        floor = math.sqrt(ema_noise_var(sigma**2 / batch, m, steps)) / sigma
        assert last[f"bn_noise_rms{sfx}"] == pytest.approx(floor, rel=0.15), sfx
        both = math.sqrt(expected**2 + floor**2 + last["bn_ref_noise_rms/s"] ** 2)
        assert last[f"bn_lag_rms{sfx}"] == pytest.approx(both, rel=0.1), sfx
    # a faster EMA lags less and scatters more: the trade the shadow sets measure in one run
    assert last["bn_lag_pred_rms@0.3"] < last["bn_lag_pred_rms@0.03"] < last["bn_lag_pred_rms"]
    assert last["bn_noise_rms@0.3"] > last["bn_noise_rms@0.03"] > last["bn_noise_rms"]


def test_a_continued_probe_records_what_the_straight_one_records():
    torch.manual_seed(0)
    model = Drifting(8, 0.1).train()
    reference = torch.randn(32, 8)
    probe = probe_of(model, (0.2,), reference, 4)
    batches = [torch.randn(4, 8) + 0.1 * k for k in range(12)]
    for k, x in enumerate(batches[:6]):
        model(x)
        probe.after_step(StepPoint(k + 1, False, False))
    validation(probe, model, 6)
    again = probe_of(model, (0.2,), reference, 4)
    again.load_state_dict(probe.state_dict())
    for k, x in enumerate(batches[6:], start=6):
        model(x)
        for p in (probe, again):
            p.after_step(StepPoint(k + 1, False, False))
    assert validation(again, model, 12) == validation(probe, model, 12)
