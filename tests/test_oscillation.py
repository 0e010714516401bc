"""Oscillation figures pinned on small hand-made series (expected values worked out by hand in the comments)."""

import json
import math

import pytest

from runner.core.headline import Headline
from runner.core.oscillation import (
    count_rises,
    headline_points,
    max_rise,
    oscillation_block,
    phase_window,
    removed_share,
    roughness,
    total_variation_per_epoch,
    val_points,
)

V = [3, 2, 2.5, 1, 1.2, 0.9]  # running min 3,2,2,1,1,0.9 → rises 0,0,0.5,0,0.2,0
E = [1, 2, 3, 4, 5, 6]


def val_records(losses, epochs, accs=None, train_eval=None, recal=None, accs_recal=None, train_eval_recal=None):
    """Validation records as the trainer writes them; the `*_recal` keys only when a recal series is given."""
    out = []
    for i, (v, e) in enumerate(zip(losses, epochs)):
        r = {"step": 10 * (i + 1), "epoch": e, "val_loss": v, "val_acc": None if accs is None else accs[i]}
        if train_eval is not None:
            r["train_eval_loss"], r["train_eval_acc"] = train_eval[i], 0.5
        if recal is not None:
            r["val_loss_recal"], r["val_acc_recal"] = recal[i], None if accs_recal is None else accs_recal[i]
        if train_eval_recal is not None:
            r["train_eval_loss_recal"], r["train_eval_acc_recal"] = train_eval_recal[i], 0.5
        out.append(r)
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
    # dips back to 15 % (≤ 16 %) end the first episode, the rise to 26 % above the new min 0.95 is a second
    assert count_rises([1, 1.2, 1.3, 1.15, 0.95, 1.2], 0.16) == 2
    assert count_rises([1, 1.2, 1.3, 1.15, 1.25], 0.1) == 1  # never back under 10 %: still one episode
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
    # T = 9, points at epochs 0..9: mid = epochs 3, 4, 5 (6 belongs to last), last = 6, 7, 8, 9 (T included)
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
    b = oscillation_block(val_records(V, E, accs=[0.5, 0.89, 0.9, 0.91, 0.93, 0.95]), epochs_total=6)
    assert b["epochs_to_90"] == 3 and b["epochs_to_92"] == 5
    b = oscillation_block(val_records(V, E, accs=[0.5, 0.6, 0.7, 0.8, None, 0.91]), epochs_total=6)
    assert b["epochs_to_90"] == 6 and b["epochs_to_92"] is None


def test_generalization_gap_prefers_train_eval():
    b = oscillation_block(val_records([2.0, 1.5], [1, 2], train_eval=[1.0, 0.25]), epochs_total=2)
    assert b["gen_gap"] == pytest.approx(1.25) and b["gen_gap_source"] == "train_eval"


def test_generalization_gap_falls_back_to_last_epoch_train_loss():
    train = [{"step": s, "epoch": s / 2, "train_loss": x} for s, x in [(1, 9.0), (2, 5.0), (3, 0.6), (4, 0.4)]]
    b = oscillation_block(train + val_records([2.0, 1.5], [1, 2]), epochs_total=2)
    assert b["gen_gap"] == pytest.approx(1.5 - 0.5)  # mean train_loss over epochs (1, 2] = (0.6 + 0.4)/2
    assert b["gen_gap_source"] == "train_loss_last_epoch"


def test_diverged_series_stops_at_last_finite_value():
    recs = val_records([2.0, 1.0, 1.5, None, 0.1], [1, 2, 3, 4, 5], accs=[0.1, 0.5, 0.6, 0.1, 0.99])
    recs.append({"step": 60, "epoch": 6, "val_loss": float("nan"), "val_acc": 0.1})
    recs += [{"step": 5, "epoch": 0.5, "weight_norm": 3.0}, {"step": 45, "epoch": 4.5, "weight_norm": None}]
    b = oscillation_block(recs, epochs_total=10)
    assert b["n_val_points"] == 3
    assert b["tv_per_epoch"] == pytest.approx(1.5 / 2)
    assert b["max_rise_rel"] == pytest.approx(0.5)
    assert b["epochs_to_90"] is None  # the 0.99 after divergence does not count
    assert b["final_weight_norm"] == 3.0
    json.dumps(b, allow_nan=False)  # JSON-able: no NaN anywhere


def test_val_points_sorted_and_deduplicated():
    recs = [
        {"step": 20, "epoch": 2, "val_loss": 1.0},
        {"step": 10, "epoch": 1, "val_loss": 3.0},
        {"step": 20, "epoch": 2, "val_loss": 2.0},
        {"step": 5, "epoch": 0.5, "train_loss": 4.0, "grad_norm": 1},
    ]
    assert [p["loss"] for p in val_points(recs)] == [3.0, 2.0]  # step order; a re-logged step keeps the later record


def test_block_on_empty_records():
    b = oscillation_block([], epochs_total=30)
    assert b["n_val_points"] == 0 and b["n_val_points_recal"] == 0 and b["epochs_to_metric"] == "running"
    assert all(
        v is None
        for k, v in b.items()
        if k not in ("n_val_points", "n_val_points_recal", "rise_threshold", "epochs_to_metric")
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
    }
    assert all(
        v is None or isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v))
        for v in b.values()
    )


# ---------------------------------------------------------------- running statistics vs recalibrated BatchNorm

W = [3, 2, 1.8, 1, 0.95, 0.9]  # the same run recalibrated: monotone, TV (1 + 0.2 + 0.8 + 0.05 + 0.05) / 5 = 0.42


def test_the_recalibrated_series_has_its_own_figures():
    b = oscillation_block(val_records(V, E, recal=W), epochs_total=6)
    assert b["tv_per_epoch"] == pytest.approx(0.7) and b["tv_per_epoch_recal"] == pytest.approx(0.42)
    assert b["max_rise_rel"] == pytest.approx(0.25) and b["n_rises"] == 2  # the running series as before
    assert b["max_rise_recal"] == 0 and b["max_rise_rel_recal"] == 0 and b["n_rises_recal"] == 0
    assert b["max_rise_epoch_recal"] == 1 and b["n_val_points_recal"] == 6


def test_recal_removed_share_is_the_part_of_the_total_variation_recalibration_takes_away():
    b = oscillation_block(val_records(V, E, recal=W), epochs_total=6)
    assert b["recal_removed_share"] == pytest.approx(1 - 0.42 / 0.7)  # 40 % of the oscillation was BN bookkeeping
    b = oscillation_block(val_records(W, E, recal=V), epochs_total=6)
    assert b["recal_removed_share"] == pytest.approx(1 - 0.7 / 0.42)  # recalibrated moves more: negative
    assert removed_share(0.0, 0.0) is None  # a flat running series: nothing to remove
    assert removed_share(0.5, None) is None and removed_share(None, 0.5) is None


def test_a_run_without_recalibration_has_no_recal_figures():
    b = oscillation_block(val_records(V, E, accs=[0.5, 0.89, 0.9, 0.91, 0.93, 0.95]), epochs_total=6)
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
    assert b["val_roughness_mid"] == 0 and b["roughness_ratio_mid"] is None  # flat running series, flat train_eval


def test_epochs_to_accuracy_follows_the_headline_accuracy():
    # summary.json's best_val_acc is the recalibrated one when recorded: epochs_to_90/92 must agree with it
    recs = val_records(V, E, accs=[0.5, 0.6, 0.7, 0.8, 0.91, 0.93], recal=W, accs_recal=[0.5, 0.9, 0.92, 0.9, 0.9, 0.9])
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
    assert not Headline.of_records(plain).recalibrated and [p["acc"] for p in headline_points(plain)] == [0.5, 0.6]
    recal = val_records([2.0, 1.0], [1, 2], accs=[0.5, 0.6], recal=[1.9, 0.9], accs_recal=[0.55, 0.65])
    assert Headline.of_records(recal).recalibrated and [p["acc"] for p in headline_points(recal)] == [0.55, 0.65]
    assert [p["step"] for p in headline_points(recal)] == [10, 20]
    # train records never make a run "recalibrated", whatever they hold
    assert not Headline.of_records([{"step": 1, "epoch": 0.1, "train_loss": 1.0, "val_loss_recal": 1.0}]).recalibrated
