"""Rotational equilibrium and the decay's EMA timescale (core.equilibrium) against closed forms."""

import math

import pytest
import torch
from torch import nn

from runner.core.equilibrium import (
    Rotation,
    angle_between,
    angular_speed,
    effective_decay,
    effective_steps,
    ema_timescale,
    equilibrium_block,
    equilibrium_norm,
    log_point_figures,
    predicted_angular_speed,
    run_timescale,
)
from runner.core.update_rule import Optimizer


def test_angle_between_from_norms_and_the_difference():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    assert angle_between(1.0, 3.0, float((b - a).pow(2).sum())) == pytest.approx(math.pi / 2)
    theta = 1e-4  # a small angle, where acos of a float32 dot product would return 0
    c = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64) * 2
    assert angle_between(1.0, 2.0, float((c - a.double()).pow(2).sum())) == pytest.approx(theta, rel=1e-6)
    assert angle_between(0.0, 1.0, 1.0) is None


def test_rotation_keeps_the_previous_point_on_the_device():
    p = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])]
    r = Rotation()
    assert r.diff_sq(p) is None
    p[0].copy_(torch.tensor([0.0, 1.0]))
    assert r.diff_sq(p).tolist() == [pytest.approx(2.0), 0.0]
    assert r.diff_sq(p).tolist() == [0.0, 0.0]  # the previous point moved on with it


def test_effective_decay_and_timescale():
    assert effective_decay("adam", 1e-3, 0.1, 0.0, 0.9) == 1e-3
    assert effective_decay("sgd", 0.0, 0.1, 5e-4, 0.9) == pytest.approx(0.1 * 5e-4 / 0.1)
    assert effective_decay("adam", 0.0, 0.1, 5e-4, 0.9) is None  # Adam + L2: no shrink
    assert ema_timescale([1e-3, 3e-3], 2) == {"tau_steps": pytest.approx(500), "tau_fraction": pytest.approx(250)}
    assert ema_timescale([0.0, 0.0], 2) == {"tau_steps": None, "tau_fraction": None}
    assert predicted_angular_speed(0.02) == pytest.approx(0.2)


class ScaleInvariant(nn.Module):
    """A weight whose loss depends on its direction only, with a fresh random target direction each step."""

    def __init__(self, c: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(c, 1) * 0.01)

    def forward(self, target):
        return (self.w / self.w.norm() * target).sum()


def test_a_scale_invariant_layer_under_adamw_settles_at_the_predicted_norm_and_angular_speed():
    torch.manual_seed(0)
    c, lr, d, steps, every = 2000, 1e-2, 5e-3, 1500, 25  # τ = 200 steps: the run is 7.5 τ long
    model = ScaleInvariant(c)
    # β2 = 0.99: v̂ follows the gradient's scale, which falls 10× as ‖θ‖ grows from 0.45 to its equilibrium 4.5
    opt = Optimizer(model, algorithm="adam", lr=lr, l2=0.0, wd=d, decay=lambda t, eta: d, decay_on="all",
                    betas=(0.9, 0.99))  # fmt: skip
    rotation, prev, speeds = Rotation(), None, []
    for k in range(steps):
        model(torch.randn(c, 1)).backward()
        opt.step(0.0, 1.0)
        opt.zero_grad()
        if (k + 1) % every == 0:
            norm = model.w.norm().item()
            diff = rotation.diff_sq([model.w])
            if diff is not None and k > steps // 2:  # past the transient
                speeds.append(angular_speed(angle_between(prev, norm, diff.item()), every, 0.9))
            prev = norm
    assert model.w.norm().item() / equilibrium_norm(lr, d, c) == pytest.approx(1.0, abs=0.1)
    assert sum(speeds) / len(speeds) / predicted_angular_speed(d) == pytest.approx(1.0, abs=0.1)


def test_log_point_figures_name_each_stage():
    rule = {"algorithm": "adam", "l2": 0.0, "momentum": 0.0}
    f = log_point_figures({"a": 2.0}, {"a": 16.0}, {"a": 2.0}, 4, [0.1] * 4, [0.02] * 4, {"a": 50}, rule)
    assert f["rotation/a"] == pytest.approx(2 * math.asin(1.0))  # ‖b − a‖ = 2‖a‖, equal norms: opposite
    assert f["angular_update/a"] == pytest.approx(math.pi / 2) and f["rotation_steps"] == 4  # no momentum: k_eff = k
    assert f["angular_update_eq"] == pytest.approx(0.2)
    assert f["weight_norm_eq/a"] == pytest.approx(0.1 * math.sqrt(50 / 0.04))
    first = log_point_figures({"a": 2.0}, {}, None, 4, [0.1] * 4, [0.0] * 4, {"a": 50}, rule)
    assert first == {}  # no previous point, no decay: nothing to say


def test_effective_steps_of_momentum_averaged_updates():
    assert effective_steps(25, 0.0) == 25
    assert effective_steps(25, 0.9) == pytest.approx(16.2, abs=0.05)  # worked out in core.equilibrium's docstring
    # by simulation: the sum of 25 consecutive EMA-averaged unit-variance gradients
    torch.manual_seed(0)
    g = torch.randn(20000, 125)
    m = torch.zeros(20000)
    sums = torch.zeros(20000)
    for t in range(125):
        m = 0.9 * m + 0.1 * g[:, t]
        if t >= 100:
            sums += m
    assert sums.var().item() == pytest.approx(effective_steps(25, 0.9), rel=0.05)


def test_the_equilibrium_block_averages_the_middle_third_of_the_schedule():
    logs = [
        {"step": e, "epoch": e, "weight_norm/a": 2.0 * e, "weight_norm_eq/a": e, "angular_update/a": 0.01 * e,
         "angular_update_eq": 0.02}
        for e in range(1, 10)
    ]  # fmt: skip
    b = equilibrium_block(logs + [{"step": 3, "epoch": 3, "val_loss": 1.0}], epochs_total=9)
    assert b["norm_ratio/a"] == pytest.approx(2.0)  # epochs 3, 4, 5 of [3, 6)
    assert b["angular_ratio/a"] == pytest.approx((1.5 + 2 + 2.5) / 3)
    assert b["angular_update_mid"] == pytest.approx(0.04) and b["angular_update_eq_mid"] == pytest.approx(0.02)
    assert equilibrium_block([], epochs_total=9) == {"angular_update_mid": None, "angular_update_eq_mid": None}
    l2 = [
        {"step": e, "epoch": e, "weight_norm/a": 1.0, "l2_grad_ratio/a": e, "l2_sign_fraction/a": 0.1}
        for e in range(10)
    ]
    b = equilibrium_block(l2, epochs_total=9)
    assert b["l2_grad_ratio/a"] == pytest.approx(4) and b["l2_sign_fraction/a"] == pytest.approx(0.1)
    assert b["norm_ratio/a"] is None  # Adam + L2: no equilibrium prediction


def test_run_timescale_uses_each_rules_own_shrink():
    adamw = {"algorithm": "adam", "l2": 0.0, "momentum": 0.9}
    assert run_timescale([0.1] * 4, [1e-3] * 4, 4, adamw) == {"tau_steps": pytest.approx(1e3), "tau_fraction": 250.0}
    sgd_l2 = {"algorithm": "sgd", "l2": 1e-3, "momentum": 0.9}
    assert run_timescale([0.1] * 4, [0.0] * 4, 4, sgd_l2)["tau_steps"] == pytest.approx(1 / (0.1 * 1e-3 / 0.1))
    adam_l2 = {"algorithm": "adam", "l2": 1e-3, "momentum": 0.9}
    assert run_timescale([0.1] * 4, [0.0] * 4, 4, adam_l2) == {"tau_steps": None, "tau_fraction": None}
