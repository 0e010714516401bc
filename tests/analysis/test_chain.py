"""The link-by-link fits of the chain and the bounded oscillation figures (analysis.chain), on
hand-made records of known answer."""

import math

import pytest

from runner.analysis.chain import (
    chain_fits,
    in_warmup,
    lag_by_momentum,
    link_a,
    link_b,
    link_c,
    link_d,
    middle_third,
    statistics_sets,
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
    runs["a"][0]["angular_update_step/stages.0"] = 10.0  # a transient, before its window
    windows = dict.fromkeys(runs, (100, 1000))
    fits = link_a(runs, ["stages.0"], windows)
    fit = fits["stages.0"]
    assert fit["per_run"]["a"]["ratio"] == pytest.approx(1.0)
    assert fit["across_runs"]["mean"] == pytest.approx(1.1) and fit["across_runs"]["n"] == 3
    assert fit["across_runs"]["lo"] < 1.1 < fit["across_runs"]["hi"] and fit["n_points"] == 27
    assert fits["all"]["left_out"] == 3 and fits["all"]["n_points"] == 27


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


def test_link_c_leaves_out_the_warm_up_and_adds_the_noise_floors():
    def rec(step, pred, noise, ref, factor):
        return {
            "step": step,
            "bn_lag_rms": 0.0,
            "bn_lag_rms@0.001/stages.2": factor * math.sqrt(pred**2 + noise**2 + ref**2),
            "bn_lag_pred_rms@0.001/stages.2": pred,
            "bn_noise_rms@0.001/stages.2": noise,
            "bn_ref_noise_rms/stages.2": ref,
        }

    runs = {
        seed: [
            {"step": 100, "bn_lag_rms": 0.0}
        ]  # the first validation: where the prediction starts
        + [rec(1000, 0.1, 0.01, 0.02, 5.0)]
        + [rec(s, 0.3, 0.05, 0.02, f) for s in (4000, 5000, 6000)]
        for seed, f in (("a", 0.9), ("b", 1.0), ("c", 1.1))
    }
    momenta = dict.fromkeys(runs, {"@0.001": 0.001})
    fits = link_c(runs, ["stages.2"], momenta)
    fit = fits["stages.2@0.001"]
    assert fit["warmup_left_out"] == 3  # step 1000: 0.999^900 = 41 % still on the start
    assert fit["across_runs"]["mean"] == pytest.approx(1.0) and fit["n_points"] == 9
    assert fits["all*"]["across_runs"]["mean"] == pytest.approx(1.0)


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
    momenta = dict.fromkeys(runs, {"": 0.01, "@0.03": 0.03, "@0.3": 0.3, "@0.001": 0.001})
    fit = link_d(runs, momenta)
    assert fit["across_runs"]["mean"] == pytest.approx(0.5) and fit["across_runs"]["n"] == 3
    assert fit["warmup_left_out"] == 6  # m = 0.001 at steps 1000 and 2000, in each of the 3 runs
    assert fit["pooled"]["n"] == 30


def test_the_sets_and_window_a_run_has():
    recs = [
        {"step": 50, "epoch": 0.5, "val_loss_shadow@0.3": 1.0, "val_loss_shadow@0.03": 1.0},
        {"step": 100, "epoch": 1.0},
    ]
    assert statistics_sets(recs, 0.01) == {"": 0.01, "@0.03": 0.03, "@0.3": 0.3}
    assert statistics_sets(recs, None) == {"@0.03": 0.03, "@0.3": 0.3}
    assert middle_third(recs, 3) == (pytest.approx(100), pytest.approx(200))


def test_lag_against_momentum_from_one_run():
    recs = [
        {
            "step": s,
            "val_loss_recal_aug": 1.0,
            "val_loss_running": math.exp(0.2),
            "bn_lag_rms": 0.4,
            "bn_lag_pred_rms": 0.3,
            "bn_noise_rms": 0.01,
            "bn_shadow_batches": s,
            "val_loss_shadow@0.3": math.exp(0.05),
            "bn_lag_rms@0.3": 0.1,
            "bn_noise_rms@0.3": 0.05,
        }
        for s in (100, 500, 900)
    ]
    lags = lag_by_momentum(recs, {"": 0.01, "@0.3": 0.3})
    assert lags[""]["n"] == 2 and lags[""]["lag"] == pytest.approx(0.4)  # 0.99^100: warm-up
    assert lags[""]["loss_gap"] == pytest.approx(0.2) and lags[""]["lag_pred"] == pytest.approx(0.3)
    assert lags["@0.3"]["n"] == 3 and lags["@0.3"]["loss_gap"] == pytest.approx(0.05)
    assert lags["@0.3"]["lag_pred"] is None  # not recorded: no prediction


def test_the_fits_of_the_report_from_runs_as_analysis_runs_reads_them():
    def run(path, ratio, status="completed"):
        recs = [
            {
                "step": s,
                "epoch": s / 100,
                "angular_update_step/stages.0": ratio * 0.02,
                "angular_update_step_pred": 0.02,
            }
            for s in range(0, 900, 10)
        ]
        hp = {"epochs": 9, "model.bn_momentum": 0.01}
        return {"path": path, "status": status, "chain_records": recs, "hparams": hp}

    runs = [run("a", 0.9), run("b", 1.1), run("c", 5.0, status="diverged")]
    fits = chain_fits(runs)
    assert fits["runs"] == 2 and fits["stages"] == ["stages.0"]
    assert fits["a"]["all"]["across_runs"]["mean"] == pytest.approx(1.0)
    assert fits["a"]["all"]["n_points"] == 2 * 30  # steps 300-590 of 900: the middle third
    assert chain_fits([run("c", 1.0, status="diverged")]) is None
