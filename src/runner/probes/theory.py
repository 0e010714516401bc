"""The predictions the probes test, one closed form each: rotational equilibrium (Kosson et al.),
the decay's EMA timescale (Wang & Aitchison) and the lag of an exponential moving average
(BatchNorm's running statistics). Pure functions of numbers; no torch, nothing from the engine.

Notation. Step k applies lr_t and the decoupled shrink d_t (θ ← θ·(1 − d_t), core.step_plan):
    wd_scaling=schedule  d_t = η_t·λ      wd_scaling=lr  d_t = lr_t·λ      wd_scaling=none  d_t = λ
torch.optim.AdamW and the authors' code write the same shrink as lr·weight_decay, so their "ηλ" is
our d_t under any wd_scaling. β is the momentum of the update: Adam's β1 or SGD's momentum μ.

Rotational equilibrium (Kosson, Messmer & Jaggi 2024, "Rotational Equilibrium: How Weight Decay
Balances Learning Across Neural Networks", arXiv:2305.17212; code epfml/REQ
shared/optimizers/rotational_wrapper.py, adamw_etar_func and sgdm_etar_func). A scale-invariant
tensor (one BatchNorm follows) has its gradient orthogonal to θ. With updates that are a random walk
(gradients independent from step to step, mean small against their noise), ‖θ‖² grows by the walk's
long-run variance per step and the decay takes 2·d·‖θ‖²:
    long-run shrink    d_eff = d_t (decoupled decay); lr_t·λ₂/(1 − μ) (SGD + L2 through momentum)
    equilibrium norm   ‖θ‖ = lr_t·√(C/(2·d_t)) (Adam: each of C values walks lr_t a step long-run)
    diffusion rate     ω_diff = √(2·d_eff): the angle θ's direction diffuses per step over many
                       steps (angle² grows by 2·d_eff a step)
    per-step angle     ω_step = √(2·d_eff·(1 − β)/(1 + β)): the angle between θ of two consecutive
                       steps
The per-step angle is smaller because consecutive momentum-averaged updates share most of their
gradients: one update has variance (1 − β)/(1 + β) of the long-run walk's per-step variance. In the
authors' terms: AdamW d_eff = lr·λ gives √(2ηλ(1 − β1)/(1 + β1)) (adamw_etar_func); SGDM with
torch's weight_decay, where λ₂ passes through the momentum, d_eff = lr·λ₂/(1 − μ) gives
√(2ηλ/(1 + μ)) (sgdm_etar_func); SGD with decoupled decay (sgdw) has d_eff = d_t and gets
√(2·d_t·(1 − μ)/(1 + μ)), not the SGDM form. ω_step is 4.36× below ω_diff at β = 0.9.
Limits: the random-walk regime (a gradient with a consistent mean makes updates larger and
longer-lived); equilibrium reached (≈ 1/(2·d) steps after d_t changes, so it lags a falling lr);
scale-invariant tensors only (probes.scale_invariance; BatchNorm's ε = 1e-3 breaks the invariance
once the variance of its input falls towards ε); Adam + L2 has no shrink and no prediction;
Nesterov momentum is not covered.

The decay's EMA timescale (Wang & Aitchison 2024, "How to set AdamW's weight decay as you scale
model and dataset size", arXiv:2405.13698, Section 2): AdamW's θ_t = (1 − ηλ)·θ_{t−1} − η·u_t is an
EMA of the updates with timescale τ_iter = 1/(ηλ) iterations, τ_epoch = τ_iter/M with M iterations
per epoch, η the learning rate as set (the peak of a schedule). Their guidance (the paper's
abstract, v1/v2): τ should not be (much) smaller than one epoch, so that the EMA averages over all
the data, nor (much) larger than the run, so that it forgets early updates; they find the best
τ_epoch roughly constant across model and data size. Two conventions (core.step_plan.timescales,
in summary.json's `timescale`):
    tau_steps        1/mean_t d_t over the run (core.step_plan's optimizer.wd_tau sets this one)
    tau_iter_wa      1/d_t at the step of the peak lr_t: Wang & Aitchison's 1/(η_peak·λ)
Under cosine with one warm-up epoch of 20, mean η_t ≈ 0.47, so tau_steps ≈ 2.1 × tau_iter_wa
(d_t ∝ η_t); the two agree under wd_scaling=none or a constant schedule.

BatchNorm's running statistics (torch's convention): r ← (1 − m)·r + m·b after each training batch,
b the batch's mean or unbiased variance of the layer's input. The batch of step k sees the weights
before step k's update; a validation after step s sees the weights after it. For a statistic x_j of
the weights after j updates, the running average at a validation after s updates is
E_s = Σ_{j<s} m(1 − m)^{s−1−j}·x_j + (1 − m)^s·r_0, and its lag is x_s − E_s:
    steady lag        r/m for a drift of r per step (not r·(1 − m)/m: the validation's weights are
                      one update newer than the last batch's; r·(1 − m)/m is the lag behind the last
                      batch itself)
    lag recursion     lag_{i+1} = q^n·lag_i + (1 − q^n)·r_i/m, q = 1 − m, between two validations n
                      steps apart with the statistic moving linearly at r_i per step (exact for a
                      piecewise-linear path)
    warm-up weight    q^s = (1 − m)^s on r_0 (torch starts mean 0, var 1) after s batches
    noise floor       the variance an EMA keeps of independent batch noise of variance σ_b²:
                      σ_b²·m/(2 − m)·(1 − q^(2s))
"""

from __future__ import annotations

import math


def long_run_shrink(
    algorithm: str,
    d: float,
    lr: float,
    l2: float,
    momentum: float,
) -> float | None:
    """d_eff: d for decoupled decay, lr·λ₂/(1 − μ) for SGD + L2 (the L2 term accumulates in the
    momentum buffer to λ₂θ/(1 − μ)); None for Adam + L2 alone (divided by √v̂, it shrinks by no
    fixed fraction)."""
    if d > 0:
        return d
    if l2 > 0 and algorithm == "sgd":
        return lr * l2 / (1 - momentum)
    return None


def diffusion_rate(d_eff: float | None) -> float | None:
    """ω_diff = √(2·d_eff): the long-run angle per step of θ's direction at equilibrium (module
    docstring)."""
    return math.sqrt(2 * d_eff) if d_eff and d_eff > 0 else None


def step_angle(d_eff: float | None, beta: float) -> float | None:
    """ω_step = √(2·d_eff·(1 − β)/(1 + β)): the angle between θ of two consecutive steps at
    equilibrium. AdamW: d_eff = lr·λ, Kosson et al.'s √(2ηλ(1 − β1)/(1 + β1)); SGD + L2: d_eff =
    lr·λ₂/(1 − μ), their √(2ηλ/(1 + μ)); SGD with decoupled decay: d_eff = d_t."""
    if not d_eff or d_eff <= 0 or not 0 <= beta < 1:
        return None
    return math.sqrt(2 * d_eff * (1 - beta) / (1 + beta))


def equilibrium_norm(lr: float, d: float, n_values: int) -> float | None:
    """lr·√(C/(2·d)): the equilibrium ‖θ‖ of C scale-invariant values under Adam with shrink d per
    step."""
    return lr * math.sqrt(n_values / (2 * d)) if d > 0 and lr > 0 and n_values > 0 else None


def adam_update_rms(beta1: float) -> float:
    """√((1 − β1)/(1 + β1)): the RMS per value of m̂/√v̂ for gradients that are independent noise
    from step to step (m is an EMA of them, v their variance); 0.229 at β1 = 0.9. A gradient with a
    mean raises it."""
    return math.sqrt((1 - beta1) / (1 + beta1))


def ema_steady_lag(rate: float, momentum: float) -> float:
    """r/m: how far an EMA of momentum m (torch's convention) trails a statistic drifting at r per
    step, seen at a validation after the update (the weights one step newer than the last batch)."""
    return rate / momentum


def ema_lag_path(
    steps: list[int],
    values: list[float],
    momentum: float,
    initial: float,
) -> list[float]:
    """The lag x_s − E_s at each validation step s of a statistic that moves linearly between the
    values x measured there (exact statistics, e.g. recalibrated ones), for an EMA that started at
    `initial` at step 0 and saw one batch per step; before the first validation the statistic is
    taken as constant at its first value. lag_{i+1} = q^n·lag_i + (1 − q^n)·r_i/m (module
    docstring)."""
    q = 1 - momentum
    lags = [q ** steps[0] * (values[0] - initial)]
    for i in range(1, len(steps)):
        n = steps[i] - steps[i - 1]
        rate = (values[i] - values[i - 1]) / n
        lags.append(q**n * lags[-1] + (1 - q**n) * rate / momentum)
    return lags


def ema_warmup_weight(momentum: float, steps: int) -> float:
    """(1 − m)^s: the weight the EMA still gives its initial value after s batches (0.99^138 =
    0.25)."""
    return (1 - momentum) ** steps


def ema_warm_steps(momentum: float, weight: float = 0.05) -> int:
    """The first s with (1 − m)^s ≤ weight: batches an EMA needs to leave its warm-up (299 at m =
    0.01)."""
    return math.ceil(math.log(weight) / math.log(1 - momentum))


def ema_noise_var(batch_var: float, momentum: float, steps: int | None = None) -> float:
    """σ_b²·m/(2 − m)·(1 − (1 − m)^(2s)): the variance an EMA of momentum m keeps from independent
    batch noise of variance σ_b² after s batches (s None: the stationary value σ_b²·m/(2 − m))."""
    stationary = batch_var * momentum / (2 - momentum)
    return stationary if steps is None else stationary * (1 - (1 - momentum) ** (2 * steps))
