"""Oscillation figures pinned on small hand-made series (expected values worked out by hand in the
comments)."""

import json
import math

import pytest
from conftest import ROOT

from runner.analysis.oscillation import (
    change_corr,
    count_rises,
    detrended,
    gap_share,
    headline_points,
    max_rise,
    oscillation_block,
    phase_window,
    removed_share,
    roughness,
    simulated_dispersion_bias,
    total_variation_per_epoch,
    val_points,
)
from runner.core.headline import Headline

FREQUENCY_ROBUST = {
    "val_every_steps",
    "dispersion_half_window",
    "dispersion",
    "dispersion_recal",
    "dispersion_train_eval",
    "dispersion_train_eval_recal",
    "dispersion_points",
    "dispersion_lo",
    "dispersion_hi",
    "dispersion_bias",
    "gap_share",
    "gap_recal_corr",
    "change_corr_train_eval",
    "change_corr_train",
    "acc_dispersion",
    "acc_dispersion_recal",
    "acc_sampling_error",
    *(
        f"bn_{pair}_{what}"
        for pair in ("staleness", "lag", "mismatch")
        for what in ("mu", "logvar")
    ),
    "gap_loss_mean",
    "gap_lag_mean",
    "gap_mismatch_mean",
}
V = [3, 2, 2.5, 1, 1.2, 0.9]  # running min 3,2,2,1,1,0.9 → rises 0,0,0.5,0,0.2,0
E = [1, 2, 3, 4, 5, 6]


def val_records(
    losses, epochs, accs=None, train_eval=None, recal=None, accs_recal=None, train_eval_recal=None
):
    """Validation records as the trainer writes them: each evaluation under its own name, the
    headline (the recalibrated one when given) under the bare name; the `*_recal` keys only for a
    recal series."""
    out = []
    for i, (v, e) in enumerate(zip(losses, epochs)):
        values = {"val_loss_running": v, "val_acc_running": None if accs is None else accs[i]}
        if train_eval is not None:
            values["train_eval_loss_running"], values["train_eval_acc_running"] = train_eval[i], 0.5
        if recal is not None:
            values["val_loss_recal"] = recal[i]
            values["val_acc_recal"] = None if accs_recal is None else accs_recal[i]
        if train_eval_recal is not None:
            values["train_eval_loss_recal"], values["train_eval_acc_recal"] = (
                train_eval_recal[i],
                0.5,
            )
        out.append({"step": 10 * (i + 1), "epoch": e, **Headline(recal is not None).record(values)})
    return out


def test_total_variation_per_epoch():
    # (1 + 0.5 + 1.5 + 0.2 + 0.3) / (6 − 1)
    assert total_variation_per_epoch(V, E) == pytest.approx(3.5 / 5)
    assert total_variation_per_epoch([1.0], [1.0]) is None
    assert total_variation_per_epoch([1.0, 2.0], [3.0, 3.0]) is None


def test_max_rise_absolute_and_relative():
    rise, rel, i = max_rise(V)
    assert rise == pytest.approx(0.5) and i == 2
    assert rel == pytest.approx(0.25)  # 0.5/2 beats 0.2/1
    assert max_rise([1.0, 0.5]) == (0.0, 0.0, 0)  # monotone descent: no rise
    assert max_rise([]) == (None, None, None)


def test_relative_rise_can_peak_elsewhere_than_absolute():
    rise, rel, i = max_rise([4, 4.4, 1, 1.3])  # rises 0.4 (rel 0.1) and 0.3 (rel 0.3)
    assert (rise, i) == (pytest.approx(0.4), 1) and rel == pytest.approx(0.3)


def test_count_rises_episodes():
    assert count_rises(V, 0.1) == 2  # 25 % and 20 % above the running min, separated by a new min
    assert count_rises(V, 0.21) == 1
    assert count_rises(V, 0.3) == 0
    assert count_rises([1, 1.5, 1.4, 1.3, 0.5], 0.1) == 1  # three points above: one episode
    # dips back to 15 % (≤ 16 %) end the first episode, the rise to 26 % above the new min 0.95 is a
    # second
    assert count_rises([1, 1.2, 1.3, 1.15, 0.95, 1.2], 0.16) == 2
    # never back under 10 %: still one episode
    assert count_rises([1, 1.2, 1.3, 1.15, 1.25], 0.1) == 1
    assert count_rises([], 0.1) is None


def test_roughness():
    assert roughness([1, 2, 4]) == pytest.approx(1 / (7 / 3))  # |4 − 4 + 1| / mean 7/3
    assert roughness([4, 2, 2, 2]) == pytest.approx(1 / 2.5)  # (2 + 0)/2 / 2.5
    assert roughness([1, 2, 3, 4]) == 0  # a straight line is not rough
    assert roughness([1, 2]) is None


def test_phase_windows():
    assert phase_window(9, "mid") == (3, 6, False)
    assert phase_window(9, "last") == (6, 9, True)


def test_roughness_ratios_on_phase_windows():
    # T = 9, points at epochs 0..9: mid = epochs 3, 4, 5 (6 belongs to last), last = 6, 7, 8, 9 (T
    # included)
    val = [9, 9, 9, 1, 2, 4, 4, 2, 2, 2]
    te = [0, 0, 0, 2, 2, 4, 2, 1, 2, 1]
    b = oscillation_block(val_records(val, list(range(10)), train_eval=te), epochs_total=9)
    assert b["val_roughness_mid"] == pytest.approx(3 / 7)
    assert b["roughness_ratio_mid"] == pytest.approx((3 / 7) / 0.75)  # R(te) = 2 / (8/3)
    assert b["val_roughness_last"] == pytest.approx(0.4)
    assert b["roughness_ratio_last"] == pytest.approx(0.4 / (4 / 3))  # R(te) = 2 / 1.5


def test_roughness_none_cases():
    val = [9, 9, 9, 1, 2, 4, 4, 2, 2, 2]
    b = oscillation_block(val_records(val, list(range(10))), epochs_total=9)  # no train_eval
    assert b["roughness_ratio_mid"] is None and b["roughness_ratio_last"] is None
    assert b["val_roughness_mid"] == pytest.approx(3 / 7)
    b = oscillation_block(val_records(val, list(range(10)), train_eval=val), epochs_total=30)
    assert b["roughness_ratio_mid"] is None  # window [10, 20) holds no points
    assert b["roughness_ratio_last"] is None


def test_epochs_to_accuracy():
    b = oscillation_block(
        val_records(V, E, accs=[0.5, 0.89, 0.9, 0.91, 0.93, 0.95]), epochs_total=6
    )
    assert b["epochs_to_90"] == 3 and b["epochs_to_92"] == 5
    b = oscillation_block(val_records(V, E, accs=[0.5, 0.6, 0.7, 0.8, None, 0.91]), epochs_total=6)
    assert b["epochs_to_90"] == 6 and b["epochs_to_92"] is None


def test_generalization_gap_prefers_train_eval():
    b = oscillation_block(val_records([2.0, 1.5], [1, 2], train_eval=[1.0, 0.25]), epochs_total=2)
    assert b["gen_gap"] == pytest.approx(1.25) and b["gen_gap_source"] == "train_eval"


def test_generalization_gap_falls_back_to_last_epoch_train_loss():
    train = [
        {"step": s, "epoch": s / 2, "train_loss": x}
        for s, x in [(1, 9.0), (2, 5.0), (3, 0.6), (4, 0.4)]
    ]
    b = oscillation_block(train + val_records([2.0, 1.5], [1, 2]), epochs_total=2)
    # mean train_loss over epochs (1, 2] = (0.6 + 0.4)/2
    assert b["gen_gap"] == pytest.approx(1.5 - 0.5)
    assert b["gen_gap_source"] == "train_loss_last_epoch"


def test_diverged_series_stops_at_last_finite_value():
    recs = val_records([2.0, 1.0, 1.5, None, 0.1], [1, 2, 3, 4, 5], accs=[0.1, 0.5, 0.6, 0.1, 0.99])
    recs += val_records([float("nan")], [6], accs=[0.1])
    recs[-1]["step"] = 60
    recs += [
        {"step": 5, "epoch": 0.5, "weight_norm": 3.0},
        {"step": 45, "epoch": 4.5, "weight_norm": None},
    ]
    b = oscillation_block(recs, epochs_total=10)
    assert b["n_val_points"] == 3
    assert b["tv_per_epoch"] == pytest.approx(1.5 / 2)
    assert b["max_rise_rel"] == pytest.approx(0.5)
    assert b["epochs_to_90"] is None  # the 0.99 after divergence does not count
    assert b["final_weight_norm"] == 3.0
    json.dumps(b, allow_nan=False)  # JSON-able: no NaN anywhere


def test_val_points_sorted_and_deduplicated():
    recs = [
        {"step": 20, "epoch": 2, "val_loss_running": 1.0},
        {"step": 10, "epoch": 1, "val_loss_running": 3.0},
        {"step": 20, "epoch": 2, "val_loss_running": 2.0},
        {"step": 5, "epoch": 0.5, "train_loss": 4.0, "grad_norm": 1},
    ]
    recs = [
        {**r, "val_loss": r["val_loss_running"]} if "val_loss_running" in r else r for r in recs
    ]
    # step order; a re-logged step keeps the later record
    assert [p["loss"] for p in val_points(recs)] == [
        3.0,
        2.0,
    ]


def test_block_on_empty_records():
    b = oscillation_block([], epochs_total=30)
    assert (
        b["n_val_points"] == 0
        and b["n_val_points_recal"] == 0
        and b["epochs_to_metric"] == "running"
    )
    assert all(
        v is None
        for k, v in b.items()
        if k
        not in (
            "n_val_points",
            "n_val_points_recal",
            "rise_threshold",
            "epochs_to_metric",
            "frequency_dependent",
        )
    )


def test_block_keys_and_threshold():
    b = oscillation_block(val_records(V, E), epochs_total=6, threshold=0.21)
    assert b["n_rises"] == 1 and b["rise_threshold"] == 0.21
    assert b["max_rise"] == pytest.approx(0.5) and b["max_rise_epoch"] == 3
    per_series = {
        "n_val_points",
        "tv_per_epoch",
        "max_rise",
        "max_rise_rel",
        "max_rise_epoch",
        "n_rises",
        "val_roughness_mid",
        "roughness_ratio_mid",
        "val_roughness_last",
        "roughness_ratio_last",
    }
    assert set(b) == per_series | {k + "_recal" for k in per_series} | {
        "rise_threshold",
        "recal_removed_share",
        "epochs_to_90",
        "epochs_to_92",
        "epochs_to_metric",
        "gen_gap",
        "gen_gap_source",
        "final_weight_norm",
        *FREQUENCY_ROBUST,
        "frequency_dependent",
    }
    frequency_dependent = {
        "tv_per_epoch",
        "max_rise",
        "max_rise_rel",
        "n_rises",
        "recal_removed_share",
    }
    assert set(b["frequency_dependent"]) == frequency_dependent
    assert all(
        v is None
        or isinstance(v, (int, float, str))
        and not (isinstance(v, float) and math.isnan(v))
        for k, v in b.items()
        if k != "frequency_dependent"
    )


# ---------------------------------------------------------------- running statistics vs
# recalibrated BatchNorm

# the same run recalibrated: monotone, TV (1 + 0.2 + 0.8 + 0.05 + 0.05) / 5 = 0.42
W = [
    3,
    2,
    1.8,
    1,
    0.95,
    0.9,
]


def test_the_recalibrated_series_has_its_own_figures():
    b = oscillation_block(val_records(V, E, recal=W), epochs_total=6)
    assert b["tv_per_epoch"] == pytest.approx(0.7) and b["tv_per_epoch_recal"] == pytest.approx(
        0.42
    )
    # the running series as before
    assert b["max_rise_rel"] == pytest.approx(0.25) and b["n_rises"] == 2
    assert b["max_rise_recal"] == 0 and b["max_rise_rel_recal"] == 0 and b["n_rises_recal"] == 0
    assert b["max_rise_epoch_recal"] == 1 and b["n_val_points_recal"] == 6


def test_recal_removed_share_is_the_part_of_the_total_variation_recalibration_takes_away():
    b = oscillation_block(val_records(V, E, recal=W), epochs_total=6)
    # 40 % of the oscillation was BN bookkeeping
    assert b["recal_removed_share"] == pytest.approx(1 - 0.42 / 0.7)
    b = oscillation_block(val_records(W, E, recal=V), epochs_total=6)
    # recalibrated moves more: negative
    assert b["recal_removed_share"] == pytest.approx(1 - 0.7 / 0.42)
    assert removed_share(0.0, 0.0) is None  # a flat running series: nothing to remove
    assert removed_share(0.5, None) is None and removed_share(None, 0.5) is None


def test_a_run_without_recalibration_has_no_recal_figures():
    b = oscillation_block(
        val_records(V, E, accs=[0.5, 0.89, 0.9, 0.91, 0.93, 0.95]), epochs_total=6
    )
    assert b["n_val_points_recal"] == 0 and b["epochs_to_metric"] == "running"
    assert all(b[k] is None for k in b if k.endswith("_recal") and k != "n_val_points_recal")
    assert b["recal_removed_share"] is None
    assert b["epochs_to_90"] == 3  # running accuracy: the only one there is


def test_roughness_of_the_recalibrated_series_against_recalibrated_train_eval():
    # the windows and numbers of test_roughness_ratios_on_phase_windows, now on the _recal keys
    val = [9, 9, 9, 1, 2, 4, 4, 2, 2, 2]
    te = [0, 0, 0, 2, 2, 4, 2, 1, 2, 1]
    flat = [5.0] * 10
    recs = val_records(flat, list(range(10)), train_eval=flat, recal=val, train_eval_recal=te)
    b = oscillation_block(recs, epochs_total=9)
    assert b["val_roughness_mid_recal"] == pytest.approx(3 / 7)
    assert b["roughness_ratio_mid_recal"] == pytest.approx((3 / 7) / 0.75)
    assert b["val_roughness_last_recal"] == pytest.approx(0.4)
    assert b["roughness_ratio_last_recal"] == pytest.approx(0.4 / (4 / 3))
    # flat running series, flat train_eval
    assert b["val_roughness_mid"] == 0 and b["roughness_ratio_mid"] is None


def test_epochs_to_accuracy_follows_the_headline_accuracy():
    # summary.json's best_val_acc is the recalibrated one when recorded: epochs_to_90/92 must agree
    # with it
    recs = val_records(
        V,
        E,
        accs=[0.5, 0.6, 0.7, 0.8, 0.91, 0.93],
        recal=W,
        accs_recal=[0.5, 0.9, 0.92, 0.9, 0.9, 0.9],
    )
    b = oscillation_block(recs, epochs_total=6)
    assert (b["epochs_to_90"], b["epochs_to_92"], b["epochs_to_metric"]) == (2, 3, "recalibrated")


def test_each_series_stops_at_its_own_first_non_finite_loss():
    recs = val_records([2.0, 1.0, 1.5, 1.2], [1, 2, 3, 4], recal=[1.9, 0.9, None, 0.8])
    assert [p["loss"] for p in val_points(recs)] == [2.0, 1.0, 1.5, 1.2]
    assert [p["loss"] for p in val_points(recs, recal=True)] == [1.9, 0.9]
    b = oscillation_block(recs, epochs_total=4)
    assert b["n_val_points_recal"] == 2 and b["tv_per_epoch_recal"] == pytest.approx(1.0)


def test_headline_points_are_the_recalibrated_series_when_the_records_have_it():
    plain = val_records([2.0, 1.0], [1, 2], accs=[0.5, 0.6])
    assert not Headline.of_records(plain).recalibrated and [
        p["acc"] for p in headline_points(plain)
    ] == [0.5, 0.6]
    recal = val_records(
        [2.0, 1.0], [1, 2], accs=[0.5, 0.6], recal=[1.9, 0.9], accs_recal=[0.55, 0.65]
    )
    assert Headline.of_records(recal).recalibrated and [
        p["acc"] for p in headline_points(recal)
    ] == [0.55, 0.65]
    assert [p["step"] for p in headline_points(recal)] == [10, 20]
    # train records never make a run "recalibrated", whatever they hold
    assert not Headline.of_records(
        [{"step": 1, "epoch": 0.1, "train_loss": 1.0, "val_loss_recal": 1.0}]
    ).recalibrated


# ---------------------------------------------------------------- figures that do not depend on
# val_every


def test_detrended_residuals_leave_each_point_out_of_its_own_median():
    # half window 1: point i sees i−1 and i+1 only (endpoints skipped: their window leaves the
    # series)
    r = detrended([1.0, 5.0, 2.0, 2.0, 9.0], [0, 1, 2, 3, 4], 1.0)
    assert r == {1: 5.0 - 1.5, 2: 2.0 - 3.5, 3: 2.0 - 5.5}
    # a line: none
    assert detrended([1.0, 2.0, 3.0, 4.0, 5.0], [0, 1, 2, 3, 4], 1.0) == {
        1: 0.0,
        2: 0.0,
        3: 0.0,
    }


def white_noise_run(per_epoch: int, epochs: int = 20, sigma: float = 0.2, seed: int = 0):
    """Validation records of a loss decaying as 2·exp(−t/8) times log-normal white noise,
    `per_epoch` a epoch."""
    import random

    rng = random.Random(seed)
    n = per_epoch * epochs
    recs = []
    for i in range(1, n + 1):
        e = i / per_epoch
        noise = math.exp(rng.gauss(0, sigma))
        v = 2 * math.exp(-e / 8) * noise
        recs.append({"step": i * 100, "epoch": e, "val_loss_running": v, "val_acc_running": 0.5})
        recs[-1].update(val_loss=v, val_acc=0.5)
    return recs


def test_dispersion_is_stable_under_thinning_where_total_variation_halves():
    recs = white_noise_run(per_epoch=8)
    full = oscillation_block(recs, epochs_total=20)
    halves = [oscillation_block(recs[k::2], epochs_total=20) for k in (0, 1)]
    quarters = [oscillation_block(recs[k::4], epochs_total=20) for k in range(4)]
    assert full["val_every_steps"] == 100 and halves[0]["val_every_steps"] == 200
    for b in halves:
        # TV: about half as many steps of the same size
        assert b["tv_per_epoch"] < 0.6 * full["tv_per_epoch"]
        assert abs(b["dispersion"] / full["dispersion"] - 1) < 1 / 3
    for b in quarters:
        assert b["tv_per_epoch"] < 0.35 * full["tv_per_epoch"]
        assert abs(b["dispersion"] / full["dispersion"] - 1) < 1 / 3
    assert full["dispersion"] == pytest.approx(0.2, rel=0.15)  # the noise's own σ of log v


def test_gap_share_splits_the_running_variance_into_gap_and_recalibrated_parts():
    # w is white noise around a smooth curve; v = w·exp(g) with a gap g of its own
    import random

    rng = random.Random(1)
    recs = []
    for i in range(1, 81):
        e = i / 4
        w = math.exp(-e / 10 + rng.gauss(0, 0.1))
        g = rng.gauss(0, 0.2)
        recs += val_records([w * math.exp(g)], [e], recal=[w], accs_recal=[0.5])
        recs[-1]["step"] = i
    b = oscillation_block(recs, epochs_total=20)
    # independent parts: the gap carries about 0.2²/(0.1² + 0.2²) = 0.8 of the variance
    assert b["gap_share"] == pytest.approx(0.8, abs=0.1) and abs(b["gap_recal_corr"]) < 0.3
    assert b["dispersion"] > b["dispersion_recal"]
    same = [
        {**r, "val_loss_recal": r["val_loss_running"], "val_loss": r["val_loss_running"]}
        for r in recs
    ]
    # no gap: nothing is BatchNorm's
    assert oscillation_block(same, epochs_total=20)["gap_share"] == 0


def test_gap_share_is_bounded_where_the_old_share_was_not():
    w = {0: 0.1, 1: -0.2, 2: 0.1, 3: 0.05}
    g = {0: 0.05, 1: 0.05, 2: -0.05, 3: -0.05}
    v = {k: w[k] + g[k] for k in w}
    assert gap_share(v, w)["gap_share"] == pytest.approx(0.01 / (0.01 + 0.0625))
    # the running series nearly flat: the gap cancels the recalibrated series' moves
    flat = {k: 1e-4 * (-1) ** k for k in w}
    old = sum(flat[k] * (flat[k] - w[k]) for k in w) / sum(flat[k] ** 2 for k in w)
    assert abs(old) > 100  # Σ r_v(r_v − r_w)/Σ r_v², the share it replaces
    bounded = gap_share(flat, w)
    assert 0.49 < bounded["gap_share"] < 0.51
    assert bounded["gap_recal_corr"] == pytest.approx(-1, abs=1e-2)
    assert gap_share({0: 0.0, 1: 0.0, 2: 0.0}, {0: 0.0, 1: 0.0, 2: 0.0})["gap_share"] is None


def test_dispersion_reads_high_by_a_bias_that_falls_with_the_validations_per_epoch():
    """White noise: one validation an epoch reads 13 % high, three 4 %; beyond 2 epochs apart no
    point has two neighbours in its ±2-epoch window."""
    assert simulated_dispersion_bias(1.0) == pytest.approx(0.12, abs=0.02)
    assert simulated_dispersion_bias(2.0) < 0.10
    assert simulated_dispersion_bias(3.0) < 0.05
    assert simulated_dispersion_bias(0.4) is None
    b = oscillation_block(white_noise_run(per_epoch=1), epochs_total=20)
    assert b["dispersion_bias"] == pytest.approx(0.12, abs=0.02) and b["dispersion_points"] >= 15
    assert b["dispersion_lo"] < b["dispersion"] < b["dispersion_hi"]


def test_change_correlations_pair_val_with_train_eval_and_train_mode_loss():
    assert change_corr([1, 2, 1, 3], [2, 4, 2, 6]) == pytest.approx(1.0)
    assert change_corr([1, 2, 1, 3], [3, 2, 3, 1]) == pytest.approx(-1.0)
    assert change_corr([1, 2], [1, 2]) is None and change_corr([1, 2, 3], [1, 1, 1]) is None
    vals = [2.0, 1.0, 2.0, 1.0, 2.0]
    recs = val_records(vals, [1, 2, 3, 4, 5], train_eval=[v / 2 for v in vals])
    # train_loss between validations (steps 10, 20, ...): the mirror image of val
    recs += [
        {"step": s, "epoch": s / 10, "train_loss": 3.0 - vals[s // 10 - 1]}
        for s in range(10, 51, 10)
    ]
    recs += [
        {"step": s - 5, "epoch": s / 10, "train_loss": 3.0 - vals[s // 10 - 1]}
        for s in range(10, 51, 10)
    ]
    b = oscillation_block(recs, epochs_total=5)
    assert b["change_corr_train_eval"] == pytest.approx(1.0)
    assert b["change_corr_train"] == pytest.approx(-1.0)


def test_the_accuracy_figures_and_their_floors():
    recs = white_noise_run(per_epoch=4)
    for r in recs:
        r["val_acc"] = r["val_acc_running"] = 0.8
    b = oscillation_block(recs, epochs_total=20, n_val=10000)
    # against a new set of 10,000 images, not between two validations of this one
    assert b["acc_sampling_error"] == pytest.approx(math.sqrt(0.8 * 0.2 / 10000))
    assert b["acc_dispersion"] == 0  # a constant accuracy does not wobble
    assert b["acc_dispersion_recal"] is None  # no recalibrated series
    assert oscillation_block(recs, epochs_total=20)["acc_sampling_error"] is None  # n_val unknown


def test_a_short_run_measures_dispersion_over_a_quarter_of_its_span():
    recs = white_noise_run(per_epoch=8, epochs=2)
    b = oscillation_block(recs, epochs_total=2)
    assert b["dispersion_half_window"] == pytest.approx((2 - 1 / 8) / 4)
    assert b["dispersion"] is not None


def test_the_loss_gap_splits_into_lag_and_mismatch():
    v, w, aug = [2.0, 3.0, 2.5, 4.0], [1.0, 1.5, 1.25, 2.0], [1.5, 2.0, 2.0, 2.5]
    recs = val_records(v, [1, 2, 3, 4], recal=w)
    for r, a, z in zip(recs, aug, [0.1, 0.2, 0.15, 0.3]):
        r.update(
            val_loss_recal_aug=a,
            bn_staleness_mu_mean=z,
            bn_lag_mu_mean=z / 2,
            bn_mismatch_logvar_mean=0.5,
        )
    b = oscillation_block(recs, epochs_total=4)
    assert b["gap_loss_mean"] == pytest.approx((1 + 1.5 + 1.25 + 2) / 4)
    assert b["gap_lag_mean"] == pytest.approx((0.5 + 1 + 0.5 + 1.5) / 4)
    assert b["gap_mismatch_mean"] == pytest.approx((0.5 + 0.5 + 0.75 + 0.5) / 4)
    assert b["gap_lag_mean"] + b["gap_mismatch_mean"] == pytest.approx(b["gap_loss_mean"])
    assert b["bn_staleness_mu"] == pytest.approx(0.1875) and b["bn_lag_mu"] == pytest.approx(
        0.09375
    )
    assert b["bn_mismatch_logvar"] == 0.5 and b["bn_lag_logvar"] is None


@pytest.mark.parametrize("run", ["adamw_30ep", "adamw20_wd3e-4"])
def test_on_the_recorded_h200_runs_halving_the_validations_moves_dispersion_by_less_than_a_third(
    run,
):
    """The committed H200 records (docs/results/2026-11-28-h200, its oscillation_thinning.py prints
    the figures): every 2nd validation, either offset, keeps the dispersion within a third of the
    full series', while TV falls."""
    import gzip

    path = ROOT / "docs" / "results" / "2026-11-28-h200" / f"{run}.metrics.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    vals = sorted(
        {r["step"]: r for r in records if "val_loss" in r}.values(), key=lambda r: r["step"]
    )
    others = [r for r in records if "val_loss" not in r]
    full = oscillation_block(others + vals, None, n_val=10000)
    for offset in (0, 1):
        half = oscillation_block(others + vals[offset::2], None, n_val=10000)
        assert abs(half["dispersion"] / full["dispersion"] - 1) < 1 / 3
        assert half["tv_per_epoch"] < full["tv_per_epoch"]
        assert half["val_every_steps"] == 2 * full["val_every_steps"]
