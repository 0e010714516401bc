"""The L2 term under Adam, measured at log points (runner.probes.l2_terms)."""

import math

import pytest
import torch

from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer
from runner.probes import LogPoint, Subject
from runner.probes.l2_terms import L2Terms


def subject(model, opt, l2):
    plan = StepPlan(schedule=None, wd=0.0, l2=l2, lam_now=None, lr=[], d=[], steps_per_epoch=1)
    return Subject(model, opt, plan, None, {"all": torch.tensor([0])}, lambda: None)


def test_l2_terms_on_a_hand_made_adam_state():
    model = torch.nn.Linear(2, 2, bias=False)
    opt = Optimizer(model, algorithm="adam", l2=0.5, fused=False)
    model.weight.grad = torch.ones(2, 2)
    opt.inner.step()  # Adam's state exists from here on
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # (λ₂θ)² = 0.25, 1, 2.25, 4
    state = opt.inner.state[model.weight]
    state["step"] = torch.tensor(10.0)
    bias = 1 - 0.999**10
    state["exp_avg_sq"].copy_(torch.tensor([[0.5, 2.0], [2.0, 2.0]]) * bias)  # v̂ = 0.5, 2, 2, 2
    # the step's data gradient: ‖g‖ = 5
    point = LogPoint(10, opt.weight_norms(), torch.tensor([5.0]))
    f = L2Terms(subject(model, opt, 0.5)).at_log(point)
    assert f["l2_grad_ratio/all"].item() == pytest.approx(0.5 * math.sqrt(30) / 5)
    # mean |λ₂θ|/(√v̂ + ε): (0.5/√0.5 + 1/√2 + 1.5/√2 + 2/√2)/4
    ratio = (0.5 / math.sqrt(0.5) + 4.5 / math.sqrt(2)) / 4
    assert f["l2_update_ratio/all"].item() == pytest.approx(ratio, rel=1e-6)
    # |λ₂θ| against the RMS data gradient √(25/4) = 2.5: none above it
    assert f["l2_dominant_share/all"].item() == 0.0
    point = LogPoint(10, opt.weight_norms(), torch.tensor([2.0]))  # RMS 1: 1.5 and 2 above
    assert L2Terms(subject(model, opt, 0.5)).at_log(point)["l2_dominant_share/all"].item() == 0.5


def test_l2_terms_are_left_alone_without_l2_or_under_sgd():
    model = torch.nn.Linear(2, 2, bias=False)
    for algorithm, l2 in (("adam", 0.0), ("sgd", 0.5)):
        opt = Optimizer(model, algorithm=algorithm, l2=l2, fused=False)
        model.weight.grad = torch.ones(2, 2)
        opt.inner.step()
        point = LogPoint(1, opt.weight_norms(), torch.tensor([1.0]))
        assert L2Terms(subject(model, opt, l2)).at_log(point) == {}
