"""Rotational equilibrium (runner.probes.equilibrium) against closed forms and a scale-invariant
toy."""

import math

import pytest
import torch
from torch import nn

from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer
from runner.probes import LogPoint, Subject
from runner.probes.equilibrium import Equilibrium, angular_speed, effective_steps
from runner.probes.rotation import stage_angle
from runner.probes.theory import diffusion_rate, equilibrium_norm


class Normalised(nn.Module):
    """A 1×1 conv followed by BatchNorm (scale-invariant) and a linear head (not), in stages."""

    STAGES = ("a", "head")

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(2, 1, 1, bias=False), nn.BatchNorm2d(1))
        self.head = nn.Linear(1, 1, bias=False)

    def forward(self, x):
        return self.head(self.a(x).mean((2, 3)))


def probe_on(model, lrs, decays, stages):
    """The equilibrium probe of an Adam-trained `model` whose plan applies these lr_t and d_t."""
    opt = Optimizer(model, algorithm="adam", betas=(0.0, 0.999))
    plan = StepPlan(
        schedule=None, wd=max(decays), l2=0.0, lam_now=None, lr=lrs, d=decays, steps_per_epoch=1
    )
    stages = {k: torch.tensor(v) for k, v in stages.items()}
    return Equilibrium(Subject(model, opt, plan, None, stages, lambda: None)), opt


def log_point(probe, opt, step):
    point = LogPoint(step, opt.weight_norms(), None)
    values = {k: v.item() for k, v in probe.at_log(point).items()}
    return probe.read_log(values, point)


def test_the_probe_measures_each_stage_since_its_previous_log_point():
    model = Normalised()
    with torch.no_grad():
        model.a[0].weight.copy_(torch.tensor([2.0, 0.0]).view(1, 2, 1, 1))
        model.head.weight.fill_(3.0)
    probe, opt = probe_on(model, [0.1] * 8, [0.02] * 8, {"a": [0], "head": [1]})
    first = log_point(probe, opt, 4)
    # no previous point: no angle; the head is not scale-invariant: no SI norm, no prediction
    assert first == {
        "weight_norm/a": 2.0,
        "weight_norm/head": 3.0,
        "weight_norm_si/a": 2.0,
        "angular_diffusion_pred": pytest.approx(0.2),
        "weight_norm_eq/a": pytest.approx(0.1 * math.sqrt(2 / 0.04)),  # C_si = 2 values
    }
    with torch.no_grad():
        model.a[0].weight.mul_(-1)  # turned half a circle in 4 steps
        model.head.weight.mul_(-1)  # not counted
    f = log_point(probe, opt, 8)
    assert f["rotation/a"] == pytest.approx(math.pi) and f["rotation_steps"] == 4
    assert f["angular_diffusion/a"] == pytest.approx(math.pi / math.sqrt(effective_steps(4, 0.0)))
    assert "rotation/head" not in f
    assert log_point(probe, opt, 8)["rotation/a"] == 0.0  # the previous point moved on with θ


def test_the_probe_state_continues_a_run_where_it_stopped():
    model = Normalised()
    probe, opt = probe_on(model, [0.1] * 8, [0.02] * 8, {"a": [0], "head": [1]})
    log_point(probe, opt, 4)
    again, _ = probe_on(model, [0.1] * 8, [0.02] * 8, {"a": [0], "head": [1]})
    again.load_state_dict(probe.state_dict())
    with torch.no_grad():
        model.a[0].weight.mul_(-1)
    assert log_point(again, opt, 8) == log_point(probe, opt, 8)


class ScaleInvariant(nn.Module):
    """A weight whose loss depends on its direction only, with a fresh random target direction each
    step."""

    def __init__(self, c: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(c, 1) * 0.01)

    def forward(self, target):
        return (self.w / self.w.norm() * target).sum()


def test_a_scale_invariant_layer_under_adamw_settles_at_the_predicted_norm_and_angular_speed():
    torch.manual_seed(0)
    c, lr, d, steps, every = 2000, 1e-2, 5e-3, 1500, 25  # τ = 200 steps: the run is 7.5 τ long
    model = ScaleInvariant(c)
    # β2 = 0.99: v̂ follows the gradient's scale, which falls 10× as ‖θ‖ grows from 0.45 to its
    # equilibrium 4.5
    opt = Optimizer(model, algorithm="adam", decay_on="all", betas=(0.9, 0.99))
    prev, prev_w, speeds = None, None, []
    for k in range(steps):
        model(torch.randn(c, 1)).backward()
        opt.apply(lr, opt.keep_value(d))
        opt.zero_grad()
        if (k + 1) % every == 0:
            norm = model.w.norm().item()
            if prev_w is not None and k > steps // 2:  # past the transient
                diff = (model.w.detach() - prev_w).pow(2).sum().item()
                speeds.append(angular_speed(stage_angle(prev**2, norm**2, diff), every, 0.9))
            prev, prev_w = norm, model.w.detach().clone()
    assert model.w.norm().item() / equilibrium_norm(lr, d, c) == pytest.approx(1.0, abs=0.1)
    assert sum(speeds) / len(speeds) / diffusion_rate(d) == pytest.approx(1.0, abs=0.1)


def test_effective_steps_of_momentum_averaged_updates():
    assert effective_steps(25, 0.0) == 25
    # worked out in probes.equilibrium's docstring
    assert effective_steps(25, 0.9) == pytest.approx(16.2, abs=0.05)
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
