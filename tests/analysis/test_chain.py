"""The link-by-link fits of the chain and the bounded oscillation figures (analysis.chain), on
hand-made records of known answer."""

import math

import pytest

from runner.analysis.chain import (
    gap_share,
    in_warmup,
    link_a,
    link_b,
    link_c,
    link_d,
    paired_accuracy_noise,
    simulated_dispersion_bias,
)


def test_warm_up_of_an_ema():
    assert in_warmup(138, 0.01)  # 0.99^138 = 25 % still on the initial statistics
    assert not in_warmup(300, 0.01) and in_warmup(2000, 0.001) and not in_warmup(3000, 0.001)


def test_link_a_ratio_per_run_then_across_runs():
    runs = {
        seed: [
            {"step": s, "angular_update_step/stages.0": k * 0.02, "angular_update_step_pred": 0.02}
            for s in range(0, 1000, 100)
        ]
        for seed, k in (("a", 1.0), ("b", 1.2), ("c", 1.1))
    }
    runs["a"][0]["angular_update_step/stages.0"] = 10.0  # a transient, before start_step
    fit = link_a(runs, ["stages.0"], start_step=100)["stages.0"]
    assert fit["per_run"]["a"]["ratio"] == pytest.approx(1.0)
    assert fit["across_runs"]["mean"] == pytest.approx(1.1) and fit["across_runs"]["n"] == 3
    assert fit["across_runs"]["lo"] < 1.1 < fit["across_runs"]["hi"] and fit["n_points"] == 27


def test_link_b_drift_proportional_to_rotation():
    """Validations every 100 steps, log points every 20; the drift is 2σ per radian."""
    runs = {}
    for seed, scale in (("a", 1.0), ("b", 2.0), ("c", 0.5)):
        recs = []
        for s in range(0, 1001, 20):
            angle = scale * 0.01 * (1 + s / 1000)
            recs.append({"step": s, "angular_update_step/stages.1": angle})
            if s % 100 == 0:
                window = [scale * 0.01 * (1 + t / 1000) for t in range(s - 80, s + 1, 20)]
                recs.append({"step": s, "bn_drift_mu/stages.1": 2 * sum(window) / len(window)})
        runs[seed] = recs
    fit = link_b(runs, ["stages.1"])["stages.1"]
    assert fit["log_log"]["pooled"]["slope"] == pytest.approx(1.0)
    assert fit["log_log"]["pooled"]["r2"] == pytest.approx(1.0)
    assert fit["per_radian"]["across_runs"]["mean"] == pytest.approx(2.0)


def test_link_c_leaves_out_the_warm_up_and_adds_the_noise_floor():
    def rec(step, pred, noise, factor):
        return {
            "step": step,
            "bn_lag_rms@0.001/stages.2": factor * math.hypot(pred, noise),
            "bn_lag_pred_rms@0.001/stages.2": pred,
            "bn_noise_rms@0.001/stages.2": noise,
        }

    runs = {
        seed: [rec(100, 0.1, 0.01, 5.0)] + [rec(s, 0.3, 0.05, f) for s in (3000, 4000, 5000)]
        for seed, f in (("a", 0.9), ("b", 1.0), ("c", 1.1))
    }
    fit = link_c(runs, ["stages.2"], {"@0.001": 0.001})["stages.2@0.001"]
    assert fit["warmup_left_out"] == 3  # step 100: 0.999^100 = 90 % on the start value
    assert fit["across_runs"]["mean"] == pytest.approx(1.0) and fit["n_points"] == 9


def test_link_d_slope_of_the_loss_gap_on_the_lag_within_each_validation():
    runs = {}
    for seed, slope in (("a", 0.4), ("b", 0.5), ("c", 0.6)):
        recs = []
        for s in (1000, 2000, 3000):
            r = {"step": s, "val_loss_recal_aug": 1.0, "bn_lag_rms": 0.2, "val_loss_running": 0.0}
            r["val_loss_running"] = math.exp(slope * 0.2)
            for m, lag in ((0.03, 0.05), (0.3, 0.01), (0.001, 0.5)):
                r[f"bn_lag_rms@{m:g}"] = lag
                r[f"val_loss_shadow@{m:g}"] = math.exp(slope * lag)
            recs.append(r)
        runs[seed] = recs
    momenta = {"": 0.01, "@0.03": 0.03, "@0.3": 0.3, "@0.001": 0.001}
    fit = link_d(runs, momenta)
    assert fit["across_runs"]["mean"] == pytest.approx(0.5) and fit["across_runs"]["n"] == 3
    assert fit["warmup_left_out"] == 6  # m = 0.001 at steps 1000 and 2000, in each of the 3 runs
    assert fit["pooled"]["n"] == 30


def test_dispersion_bias_by_validation_frequency():
    """White noise: one validation an epoch reads 12 % high, three 4 %; beyond 2 epochs apart no
    point has two neighbours in its ±2-epoch window."""
    assert simulated_dispersion_bias(1.0) == pytest.approx(0.12, abs=0.02)
    assert simulated_dispersion_bias(2.0) < 0.10
    assert simulated_dispersion_bias(3.0) < 0.05
    assert simulated_dispersion_bias(0.4) is None


def test_gap_share_is_bounded_where_the_old_share_is_not():
    w = {0: 0.1, 1: -0.2, 2: 0.1, 3: 0.05}
    g = {0: 0.05, 1: 0.05, 2: -0.05, 3: -0.05}
    v = {k: w[k] + g[k] for k in w}
    out = gap_share(v, w)
    assert out["gap_share"] == pytest.approx(0.01 / (0.01 + 0.0625))
    # the running series nearly flat: the gap cancels the recalibrated series' moves
    flat = {k: 1e-4 * (-1) ** k for k in w}
    old = sum(flat[k] * (flat[k] - w[k]) for k in w) / sum(flat[k] ** 2 for k in w)
    assert abs(old) > 100  # analysis.oscillation's dispersion_share_gap
    bounded = gap_share(flat, w)
    assert 0.49 < bounded["gap_share"] < 0.51
    assert bounded["gap_recal_corr"] == pytest.approx(-1, abs=1e-2)
    assert gap_share({0: 0.0, 1: 0.0, 2: 0.0}, {0: 0.0, 1: 0.0, 2: 0.0})["gap_share"] is None


def test_the_noise_between_two_evaluations_of_one_fixed_set():
    same = [True, False, True, True]
    assert paired_accuracy_noise(same, same) == {"delta": 0.0, "floor": 0.0, "flipped": 0}
    a = [True] * 60 + [False] * 40
    b = [True] * 55 + [False] * 5 + [True] * 10 + [False] * 30  # 5 lost, 10 gained
    out = paired_accuracy_noise(a, b)
    assert out["delta"] == pytest.approx(0.05)
    assert out["floor"] == pytest.approx(math.sqrt(15) / 100)
