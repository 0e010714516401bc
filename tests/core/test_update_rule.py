"""The update rules, written out by hand from the paper and checked step by step (in float64).

Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019),
Algorithm 1 (SGD with momentum / SGDW) and Algorithm 2 (Adam / AdamW), with L2 coefficient λ₂ and
decoupled coefficient λ kept apart so that both can be on at once.
"""

import math

import pytest
import torch
from torch import nn

from runner.core.step_plan import decoupled_rate
from runner.core.update_rule import Optimizer, rounding_note, split_params

ALPHA, STEPS = 3e-3, 30


def tiny_model(seed=0):
    torch.manual_seed(seed)
    # BN before the conv: a conv bias right before BN has a zero gradient, which Adam would turn
    # into pure noise
    return nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    ).double()


BATCHES = [
    (
        torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i), dtype=torch.float64),
        torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(100 + i)),
    )
    for i in range(STEPS)
]


def eta(k):  # a schedule that moves every step, so that η_t vs lr_t vs constant matter
    return 0.5 * (1 + math.cos(math.pi * k / STEPS)) * 0.9 + 0.1


def grads(model, k):
    model.zero_grad(set_to_none=True)
    x, y = BATCHES[k]
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def run_runner(
    algorithm,
    *,
    l2=0.0,
    wd=0.0,
    wd_scaling="schedule",
    decay_on="weights",
    momentum=0.9,
    nesterov=False,
    schedule=eta,
    seed=0,
):
    model = tiny_model(seed)
    opt = Optimizer(
        model, algorithm=algorithm, l2=l2, decay_on=decay_on, momentum=momentum, nesterov=nesterov
    )
    traj = []
    for k in range(STEPS):
        grads(model, k)
        apply_step(opt, wd, wd_scaling, schedule(k))
        traj.append([p.detach().clone() for p in model.parameters()])
    return model, traj


def apply_step(opt, wd, wd_scaling, e):
    """Step k as the plan makes it (core.step_plan): lr_t = α·η_t, d_t by the convention, no shrink
    without wd."""
    d = decoupled_rate(wd, wd_scaling, ALPHA)(0.0, e)
    opt.apply(opt.lr_value(ALPHA * e), opt.keep_value(d) if wd else None)


def shrink(wd, scaling, e):
    return {"schedule": e * wd, "lr": ALPHA * e * wd, "none": wd}[scaling]


def run_paper_adamw(*, l2, wd, wd_scaling, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 2, line by line; λ₂ enters g (line 6), λ enters line 12."""
    model = tiny_model()
    reg = {id(p) for p in split_params(model, "weights")[0]}
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    traj = []
    for k in range(STEPS):
        g = grads(model, k)
        t, e = k + 1, eta(k)
        with torch.no_grad():
            for i, p in enumerate(params):
                on = id(p) in reg
                gi = g[i] + (l2 * p if on else 0)  # line 6: ∇f + λ₂θ
                m[i] = b1 * m[i] + (1 - b1) * gi  # line 7
                v[i] = b2 * v[i] + (1 - b2) * gi * gi  # line 8
                mh, vh = m[i] / (1 - b1**t), v[i] / (1 - b2**t)  # lines 9-10
                d = shrink(wd, wd_scaling, e) if on else 0.0
                p.copy_(p - ALPHA * e * mh / (vh.sqrt() + eps) - d * p)  # line 12
        traj.append([p.detach().clone() for p in params])
    return traj


def run_paper_sgdw(*, l2, wd, wd_scaling, momentum):
    """Algorithm 1 with torch's momentum convention m ← μm + g, θ ← θ − lr_t·m − d_t·θ (equal to the
    paper's m ← μm + η_tαg when η_t is constant; torch keeps lr outside the buffer)."""
    model = tiny_model()
    reg = {id(p) for p in split_params(model, "weights")[0]}
    params = list(model.parameters())
    buf = [None] * len(params)
    traj = []
    for k in range(STEPS):
        g = grads(model, k)
        e = eta(k)
        with torch.no_grad():
            for i, p in enumerate(params):
                on = id(p) in reg
                gi = g[i] + (l2 * p if on else 0)
                buf[i] = gi.clone() if buf[i] is None else momentum * buf[i] + gi
                d = shrink(wd, wd_scaling, e) if on else 0.0
                p.copy_(p - ALPHA * e * buf[i] - d * p)
        traj.append([p.detach().clone() for p in params])
    return traj


def assert_same(a, b, rtol=1e-9, atol=1e-12):
    for k, (pa, pb) in enumerate(zip(a, b)):
        for x, y in zip(pa, pb):
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=f"step {k + 1}")


@pytest.mark.parametrize("wd_scaling", ["schedule", "lr", "none"])
@pytest.mark.parametrize("l2, wd", [(0.0, 5e-3), (1e-2, 0.0), (1e-2, 5e-3)])
def test_adam_follows_algorithm_2_step_by_step(wd_scaling, l2, wd):
    _, traj = run_runner("adam", l2=l2, wd=wd, wd_scaling=wd_scaling)
    assert_same(traj, run_paper_adamw(l2=l2, wd=wd, wd_scaling=wd_scaling))


@pytest.mark.parametrize("wd_scaling", ["schedule", "lr", "none"])
@pytest.mark.parametrize("l2, wd", [(0.0, 5e-3), (1e-2, 0.0), (1e-2, 5e-3)])
def test_sgd_follows_algorithm_1_step_by_step(wd_scaling, l2, wd):
    _, traj = run_runner("sgd", l2=l2, wd=wd, wd_scaling=wd_scaling, momentum=0.9)
    assert_same(traj, run_paper_sgdw(l2=l2, wd=wd, wd_scaling=wd_scaling, momentum=0.9))


def run_torch(optimizer_cls, lam):
    """torch.optim's own optimizer, weight_decay=λ on the kernels only, lr_t set every step."""
    model = tiny_model()
    reg, other = split_params(model, "weights")
    ref = optimizer_cls(
        [{"params": reg, "weight_decay": lam}, {"params": other, "weight_decay": 0.0}], lr=ALPHA
    )
    traj = []
    for k in range(STEPS):
        grads(model, k)
        for g in ref.param_groups:
            g["lr"] = ALPHA * eta(k)
        ref.step()
        traj.append([p.detach().clone() for p in model.parameters()])
    return traj


def test_lr_convention_is_bit_for_bit_torch_adamw():
    _, ours = run_runner("adam", wd=5e-2, wd_scaling="lr")
    for k, (a, b) in enumerate(zip(ours, run_torch(torch.optim.AdamW, 5e-2))):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"differs at step {k + 1}"


def test_adam_l2_is_torch_adam_weight_decay_on_the_same_parameters():
    _, ours = run_runner("adam", l2=1e-2)
    for k, (a, b) in enumerate(zip(ours, run_torch(torch.optim.Adam, 1e-2))):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"differs at step {k + 1}"


# Plain SGD: θ − lr_t(g + λ₂θ) = θ(1 − lr_t·λ₂) − lr_t·g, so L2 with λ₂ equals SGDW with
#   wd_scaling=lr:        λ = λ₂            (d_t = lr_t·λ)
#   wd_scaling=schedule:  λ = α·λ₂          (d_t = η_t·λ)
#   wd_scaling=none:      λ = α·λ₂, only while η_t is constant (d_t = λ ignores the schedule)
@pytest.mark.parametrize(
    "wd_scaling, factor, schedule",
    [("lr", 1.0, eta), ("schedule", ALPHA, eta), ("none", ALPHA, lambda k: 1.0)],
)
def test_plain_sgd_l2_equals_sgdw_with_the_matching_lambda(wd_scaling, factor, schedule):
    l2 = 0.5
    _, coupled = run_runner("sgd", l2=l2, momentum=0.0, schedule=schedule)
    _, decoupled = run_runner(
        "sgd", wd=l2 * factor, wd_scaling=wd_scaling, momentum=0.0, schedule=schedule
    )
    assert_same(coupled, decoupled, rtol=1e-10, atol=1e-13)


def test_none_convention_breaks_the_sgd_equivalence_under_a_schedule():
    _, coupled = run_runner("sgd", l2=0.5, momentum=0.0)
    _, decoupled = run_runner("sgd", wd=0.5 * ALPHA, wd_scaling="none", momentum=0.0)
    assert not torch.allclose(coupled[-1][0], decoupled[-1][0], rtol=1e-6)


class Lonely(nn.Module):
    """Weights whose data gradient is zero: only the regularizer moves them."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64))


@pytest.mark.parametrize("lam", [1e-4, 1e-2, 1.0])
def test_adam_divides_the_l2_term_by_sqrt_v_but_not_decoupled_decay(lam):
    """With no data gradient, Adam's first L2 step is α·λθ/(|λθ|+ε) ≈ α·sign(θ) whatever λ is,
    because the L2 term is divided by √v̂ = |λθ|. AdamW's first step shrinks θ by exactly η·λ·θ."""
    results = {}
    for name, kw in {"adam_l2": {"l2": lam}, "adamw": {"wd": lam}}.items():
        m = Lonely()
        theta0 = m.w.detach().clone()
        opt = Optimizer(m, algorithm="adam", l2=kw.get("l2", 0.0))
        m.w.grad = torch.zeros_like(m.w)
        apply_step(opt, kw.get("wd", 0.0), "schedule", 1.0)
        results[name] = theta0 - m.w.detach()
    l2_step = results["adam_l2"]
    torch.testing.assert_close(
        l2_step, ALPHA * torch.sign(theta0) * (lam * theta0.abs()) / (lam * theta0.abs() + 1e-8)
    )
    assert torch.allclose(l2_step, ALPHA * torch.sign(theta0), rtol=1e-3)  # independent of λ
    torch.testing.assert_close(results["adamw"], lam * theta0)  # proportional to λ and θ


def test_decay_on_weights_leaves_bn_and_biases_alone():
    model = tiny_model()
    reg, other = split_params(model, "weights")
    assert all(p.ndim > 1 for p in reg) and len(reg) == 2
    assert len(other) == 4  # BN γ and β, conv bias, linear bias
    assert len(split_params(model, "all")[0]) == 6


def test_decay_on_all_shrinks_biases_too():
    _, traj = run_runner(
        "sgd", wd=0.5, wd_scaling="none", momentum=0.0, decay_on="all", schedule=lambda k: 0.0
    )
    base = list(tiny_model().parameters())
    for p0, p in zip(base, traj[0]):  # lr 0: only the decay acts
        torch.testing.assert_close(p, p0.detach() * 0.5)


def test_float32_weights_round_small_shrinks_as_the_rounding_note_says():
    theta = torch.linspace(-0.3, 0.3, 10_001, dtype=torch.float32)
    exact = theta.double()
    for d in (2**-25, 5e-9):  # 1 − d rounds to 1: nothing happens
        assert torch.equal(theta * (1 - d), theta)
    for d in (1e-6, 5e-7):  # applied, but only within 1.5·2^-24/d of d·θ
        applied = (exact - (theta * (1 - d)).double())[theta.abs() > 1e-3]
        want = exact[theta.abs() > 1e-3] * d
        err = ((applied - want) / want).abs()
        assert 0.5 * 2**-24 / d < err.max() <= 1.5 * 2**-24 / d


def test_rounding_note_judges_the_integrated_error_of_the_whole_decay():
    # a constant shrink of 1e-7: 1 − 1e-7 rounds to 1 − 2·2^-24, so every step applies 1.19e-7, 19 %
    # too strong
    note = rounding_note([1e-7] * 1000)
    assert (
        "apply 119.2 % of the decoupled decay" in note
        and "+19.2 %" in note
        and "no shrink" not in note
    )
    # what θ·(1 − d) multiplies by
    applied = 1 - torch.tensor(1 - 1e-7, dtype=torch.float32).double().item()
    assert applied / 1e-7 == pytest.approx(1.192, abs=1e-3)
    # strong decay whose schedule ends in 81 shrinks too small for float32: they carry ~1e-7 of the
    # total, no note
    assert rounding_note([1e-3] * 20000 + [1e-9] * 81) is None
    assert rounding_note([5e-4, 5e-5, 5e-6]) is None  # the paper's η_t·λ with the default schedule
    assert rounding_note([0.0, 0.0]) is None  # no decoupled decay
    # torch's lr_t·λ at lr=1e-3, wd=5e-4, decayed to 1 %
    note = rounding_note([5e-7, 5e-8, 5e-9, 0.0])
    assert "-3.3 %" in note and "from 5e-07 down to 5e-09" in note
    assert note.endswith("no shrink at all on the 1 steps with d_t ≤ 3e-8")
    assert "apply 0.0 %" in rounding_note([1e-8])


@pytest.mark.parametrize("algorithm", ["adam", "sgd"])
def test_loading_a_checkpoint_keeps_this_optimizers_execution_flags(algorithm):
    """torch.optim's load_state_dict takes fused/foreach/capturable from the checkpoint; the runner
    keeps its own, so an eager or CPU run's checkpoint continues on the fused (and, for CUDA graphs,
    capturable) path. Fused kernels run on CPU too: a checkpoint of the unfused optimizer is loaded
    into a fused one here."""
    kw = dict(algorithm=algorithm)
    model = tiny_model()
    saved_from = Optimizer(model, fused=False, **kw)
    for k in range(3):
        saved_from.zero_grad()
        grads(model, k)
        apply_step(saved_from, 0.0, "schedule", 1.0)
    loaded = Optimizer(model, fused=True, **kw)
    flags = {
        k: v
        for k, v in loaded.inner.param_groups[0].items()
        if k in ("fused", "foreach", "capturable")
    }
    loaded.load_state_dict(saved_from.state_dict())
    assert flags["fused"] is True
    for group in loaded.inner.param_groups:
        assert {k: group[k] for k in flags} == flags
    # the fused kernels read the step count as float32 on the weights' device
    if algorithm == "adam":
        steps = [s["step"] for s in loaded.inner.state.values()]
        assert steps and all(s.dtype == torch.float32 and s.item() == 3 for s in steps)
    loaded.zero_grad()
    grads(model, 3)
    apply_step(loaded, 0.0, "schedule", 1.0)  # the fused step runs on the loaded state
    assert all(s.get("step", torch.tensor(4.0)).item() == 4 for s in loaded.inner.state.values())
