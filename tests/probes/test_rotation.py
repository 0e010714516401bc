"""The per-step angle (probes.rotation) against Kosson et al.'s equilibrium prediction
(probes.theory)."""

import math

import pytest
import torch

from runner.probes.rotation import (
    adam_update,
    rebuilt_previous,
    sgd_update,
    stage_angle,
    stage_angles,
    step_sums,
)
from runner.probes.theory import equilibrium_norm, long_run_shrink, step_angle


def test_stage_angle_from_three_sums():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    assert stage_angle(1.0, 9.0, float((b - a).pow(2).sum())) == pytest.approx(math.pi / 2)
    small = 1e-4  # where acos of a float32 dot product would read 0
    c = torch.tensor([math.cos(small), math.sin(small)], dtype=torch.float64) * 2
    diff_sq = float((c - a.double()).pow(2).sum())
    assert stage_angle(1.0, 4.0, diff_sq) == pytest.approx(small, rel=1e-6)
    assert stage_angle(0.0, 1.0, 1.0) is None


def test_a_stage_is_one_vector_of_its_tensors():
    prev = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])]
    now = [torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0])]  # 90° and 0°
    sums = step_sums(prev, now)
    assert sums.tolist() == [[1.0, 4.0], [1.0, 4.0], [pytest.approx(2.0), 0.0]]
    both = stage_angles(sums, {"s": [0, 1], "first": [0]})
    assert both["angular_update_step/first"] == pytest.approx(math.pi / 2)
    # the concatenation (1, 0, 0, 2) → (0, 1, 0, 2): cos = 4/5
    assert both["angular_update_step/s"] == pytest.approx(math.acos(4 / 5))


def scale_invariant_loss(w: torch.Tensor) -> torch.Tensor:
    """Each row normalised (a conv's output channel before BatchNorm), against a fresh random
    target: the gradient is orthogonal to every row and independent from step to step, Kosson et
    al.'s random walk."""
    return (w / w.norm(dim=1, keepdim=True) * torch.randn_like(w)).sum()


def toy_angles(opt, w, steps: int, decoupled: float = 0.0) -> list[float]:
    """The per-step angle of w over the second half of `steps` optimizer steps, from a copy of
    θ_{k−1}."""
    angles = []
    for k in range(steps):
        opt.zero_grad()
        scale_invariant_loss(w).backward()
        prev = [w.detach().clone()]
        with torch.no_grad():
            w.mul_(1 - decoupled)  # SGD with decoupled decay: θ·(1 − d) before the update
        opt.step()
        if k >= steps // 2:
            angle = stage_angles(step_sums(prev, [w.detach()]), {"w": [0]})
            angles.append(angle["angular_update_step/w"])
    return angles


def rms(xs: list[float]) -> float:
    return math.sqrt(sum(x * x for x in xs) / len(xs))


@pytest.mark.parametrize("rule", ["adamw", "sgd_l2", "sgdw"])
def test_the_scale_invariant_toy_turns_at_the_predicted_angle_per_step(rule):
    """AdamW √(2ηλ(1−β1)/(1+β1)) and SGD + L2 √(2ηλ/(1+μ)) (epfml/REQ's adamw_etar_func,
    sgdm_etar_func), SGD with decoupled d: √(2d(1−μ)/(1+μ)); all 0.0229 here, 4.36× below the
    long-run √(2·d_eff) = 0.1."""
    torch.manual_seed(0)
    rows, cols, beta = 8, 256, 0.9
    w = torch.nn.Parameter(torch.randn(rows, cols))
    decoupled = 0.0
    if rule == "adamw":
        lr, wd = 1e-2, 0.5
        opt = torch.optim.AdamW([w], lr=lr, weight_decay=wd, betas=(beta, 0.999))
        d_eff = long_run_shrink("adam", lr * wd, lr, 0.0, beta)
        with torch.no_grad():  # start at the equilibrium norm: test the angle, not the approach
            w.mul_(equilibrium_norm(lr, d_eff, rows * cols) / w.norm())
    elif rule == "sgd_l2":
        lr, l2 = 0.1, 5e-3
        opt = torch.optim.SGD([w], lr=lr, momentum=beta, weight_decay=l2)
        d_eff = long_run_shrink("sgd", 0.0, lr, l2, beta)
    else:
        lr, decoupled = 0.1, 5e-3
        opt = torch.optim.SGD([w], lr=lr, momentum=beta)
        d_eff = long_run_shrink("sgd", decoupled, lr, 0.0, beta)
    assert d_eff == pytest.approx(5e-3)  # τ = 200 steps; the norm settles in ≈ 1/(2·d_eff) = 100
    measured = rms(toy_angles(opt, w, 1000, decoupled))
    assert measured / step_angle(d_eff, beta) == pytest.approx(1.0, abs=0.03)
    assert measured / math.sqrt(2 * d_eff) == pytest.approx(0.229, abs=0.01)


def test_the_previous_step_rebuilt_from_the_optimizer_state_gives_the_same_angle():
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(4, 64))
    adam = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.3, betas=(0.9, 0.99))
    v = torch.nn.Parameter(torch.randn(4, 64))
    sgd = torch.optim.SGD([v], lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(20):
        for p, opt in ((w, adam), (v, sgd)):
            opt.zero_grad()
            scale_invariant_loss(p).backward()
            kept = [p.detach().clone()]
            opt.step()
    # the last loop's step: kept holds θ_{k−1} of v; rebuild both and compare with the kept copies
    u = sgd_update([sgd.state[v]], lr=0.1)
    rebuilt = rebuilt_previous([v.detach()], u)
    assert torch.allclose(rebuilt[0], kept[0], atol=1e-6)  # no decoupled shrink: equal
    w_prev = w.detach().clone()
    adam.zero_grad()
    scale_invariant_loss(w).backward()
    adam.step()
    u = adam_update([adam.state[w]], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    rebuilt = rebuilt_previous([w.detach()], u)[0]
    assert torch.allclose(rebuilt, w_prev * (1 - 1e-2 * 0.3), atol=1e-6)  # (1 − d)·θ_{k−1}
    kept_angle = stage_angles(step_sums([w_prev], [w.detach()]), {"w": [0]})
    rebuilt_angle = stage_angles(step_sums([rebuilt], [w.detach()]), {"w": [0]})
    key = "angular_update_step/w"
    assert rebuilt_angle[key] == pytest.approx(kept_angle[key], rel=1e-4)
