"""Rotational equilibrium over a run's records (runner.analysis.equilibrium)."""

import pytest

from runner.analysis.equilibrium import equilibrium_block


def test_the_equilibrium_block_averages_the_middle_third_of_the_schedule():
    logs = [
        {
            "step": e,
            "epoch": e,
            "weight_norm/a": 2.0 * e,
            "weight_norm_eq/a": e,
            "angular_update/a": 0.01 * e,
            "angular_update_eq": 0.02,
        }
        for e in range(1, 10)
    ]
    b = equilibrium_block(logs + [{"step": 3, "epoch": 3, "val_loss": 1.0}], epochs_total=9)
    assert b["norm_ratio/a"] == pytest.approx(2.0)  # epochs 3, 4, 5 of [3, 6)
    assert b["angular_ratio/a"] == pytest.approx((1.5 + 2 + 2.5) / 3)
    assert b["angular_update_mid"] == pytest.approx(0.04) and b[
        "angular_update_eq_mid"
    ] == pytest.approx(0.02)
    assert equilibrium_block([], epochs_total=9) == {
        "angular_update_mid": None,
        "angular_update_eq_mid": None,
    }
    l2 = [
        {
            "step": e,
            "epoch": e,
            "weight_norm/a": 1.0,
            "l2_grad_ratio/a": e,
            "l2_sign_fraction/a": 0.1,
        }
        for e in range(10)
    ]
    b = equilibrium_block(l2, epochs_total=9)
    assert b["l2_grad_ratio/a"] == pytest.approx(4) and b["l2_sign_fraction/a"] == pytest.approx(
        0.1
    )
    assert b["norm_ratio/a"] is None  # Adam + L2: no equilibrium prediction
