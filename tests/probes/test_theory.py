"""The closed forms the probes test (probes.theory), against the papers' own forms and hand
computations."""

import math

import pytest

from runner.probes.theory import (
    adam_update_rms,
    diffusion_rate,
    ema_lag_path,
    ema_noise_var,
    ema_steady_lag,
    ema_warm_steps,
    ema_warmup_weight,
    equilibrium_norm,
    long_run_shrink,
    step_angle,
)


def test_the_step_angle_is_kosson_et_al_s_for_adamw_and_sgdm():
    lr, wd, beta = 2e-3, 0.5, 0.9
    # epfml/REQ adamw_etar_func: (2·lr·wd·(1 − β1)/(1 + β1))^0.5, lr·wd being torch's per-step
    # shrink
    kosson = (2 * lr * wd * (1 - beta) / (1 + beta)) ** 0.5
    assert step_angle(lr * wd, beta) == pytest.approx(kosson)
    # sgdm_etar_func: (2·lr·wd/(1 + μ))^0.5 with torch's SGD weight_decay (L2 through the momentum)
    d_eff = long_run_shrink("sgd", 0.0, lr, wd, beta)
    assert d_eff == pytest.approx(lr * wd / (1 - beta))
    assert step_angle(d_eff, beta) == pytest.approx((2 * lr * wd / (1 + beta)) ** 0.5)
    # the long-run diffusion rate the runner measured as angular_update: √(2d), 4.36× the step angle
    ratio = diffusion_rate(lr * wd) / step_angle(lr * wd, beta)
    assert ratio == pytest.approx(math.sqrt(19), rel=1e-12)
    assert step_angle(1e-3, 0.0) == diffusion_rate(1e-3)  # no momentum: one step is the walk
    assert step_angle(0.0, 0.9) is None and long_run_shrink("adam", 0.0, lr, 1e-3, beta) is None


def test_the_equilibrium_norm_and_adam_s_update_size():
    assert equilibrium_norm(0.1, 0.02, 50) == pytest.approx(0.1 * math.sqrt(50 / 0.04))
    assert equilibrium_norm(0.1, 0.0, 50) is None
    assert adam_update_rms(0.9) == pytest.approx(0.2294, abs=1e-4)
    # consistency: one step's Adam update over the equilibrium norm is the step angle
    lr, d, c = 1e-3, 1e-3, 10_000
    one_step = lr * math.sqrt(c) * adam_update_rms(0.9)
    assert one_step / equilibrium_norm(lr, d, c) == pytest.approx(step_angle(d, 0.9))


def test_an_ema_trails_a_linear_drift_by_r_over_m():
    m, r = 0.1, 0.5
    ema = 0.0
    for s in range(400):  # batch s sees the weights after s updates, x_s = r·s
        ema = (1 - m) * ema + m * (r * s)
    assert (r * 400) - ema == pytest.approx(ema_steady_lag(r, m))  # weights one update newer
    assert (r * 399) - ema == pytest.approx(r * (1 - m) / m)  # behind the last batch itself


def test_the_lag_recursion_is_exact_on_a_piecewise_linear_path():
    m, init = 0.05, 1.0
    steps, values = [30, 80, 200, 260], [2.0, 3.0, 1.5, 1.5]
    path = {s: v for s, v in zip(steps, values)}

    def x(j: int) -> float:  # constant before the first validation, linear between them
        if j <= steps[0]:
            return values[0]
        i = max(i for i, s in enumerate(steps) if s <= j) if j < steps[-1] else len(steps) - 1
        if j == steps[i]:
            return values[i]
        return values[i] + (values[i + 1] - values[i]) * (j - steps[i]) / (steps[i + 1] - steps[i])

    ema, lags = init, {}
    for j in range(steps[-1]):
        ema = (1 - m) * ema + m * x(j)
        if j + 1 in path:
            lags[j + 1] = path[j + 1] - ema
    assert ema_lag_path(steps, values, m, init) == pytest.approx([lags[s] for s in steps], rel=1e-9)


def test_warm_up_and_noise_floor():
    assert ema_warmup_weight(0.01, 138) == pytest.approx(0.25, abs=0.001)  # the 0.99^138
    assert ema_warm_steps(0.01) == 299
    assert ema_warmup_weight(0.01, 299) <= 0.05 < ema_warmup_weight(0.01, 298)
    assert ema_noise_var(1.0, 1.0) == 1.0  # m = 1: the last batch, all its noise
    assert ema_noise_var(2.0, 0.01) == pytest.approx(2.0 * 0.01 / 1.99)
    assert ema_noise_var(1.0, 0.3, steps=1) == pytest.approx(0.3**2)  # one batch in: m² σ²
