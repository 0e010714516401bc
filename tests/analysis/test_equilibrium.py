"""Rotational equilibrium over a run's records (runner.analysis.equilibrium)."""

import pytest

from runner.analysis.equilibrium import equilibrium_block

EMPTY = {
    "angular_update_step_mid": None,
    "angular_update_step_pred_mid": None,
    "angular_diffusion_mid": None,
    "angular_diffusion_pred_mid": None,
}


def test_the_equilibrium_block_averages_the_middle_third_of_the_schedule():
    logs = [
        {
            "step": e,
            "epoch": e,
            "weight_norm/a": 3.0 * e,  # all the stage's tensors: not what the prediction covers
            "weight_norm_si/a": 2.0 * e,
            "weight_norm_eq/a": e,
            "angular_diffusion/a": 0.01 * e,
            "angular_diffusion_pred": 0.02,
            "angular_update_step/a": 0.001 * e,
            "angular_update_step_pred": 0.004,
        }
        for e in range(1, 10)
    ]
    b = equilibrium_block(logs + [{"step": 3, "epoch": 3, "val_loss": 1.0}], epochs_total=9)
    assert b["norm_ratio/a"] == pytest.approx(2.0)  # epochs 3, 4, 5 of [3, 6)
    assert b["diffusion_ratio/a"] == pytest.approx((1.5 + 2 + 2.5) / 3)
    assert b["step_ratio/a"] == pytest.approx((0.75 + 1 + 1.25) / 3)
    assert b["angular_diffusion_mid"] == pytest.approx(0.04)
    assert b["angular_diffusion_pred_mid"] == pytest.approx(0.02)
    assert b["angular_update_step_mid"] == pytest.approx(0.004)
    assert equilibrium_block([], epochs_total=9) == EMPTY


def test_adam_l2_has_its_l2_figures_and_no_equilibrium():
    l2 = [
        {
            "step": e,
            "epoch": e,
            "weight_norm/a": 1.0,
            "l2_grad_ratio/a": e,
            "l2_update_ratio/a": 0.5,
            "l2_dominant_share/a": 0.1,
        }
        for e in range(10)
    ]
    b = equilibrium_block(l2, epochs_total=9)
    assert b["l2_grad_ratio/a"] == pytest.approx(4)
    assert b["l2_update_ratio/a"] == 0.5 and b["l2_dominant_share/a"] == pytest.approx(0.1)
    assert b["norm_ratio/a"] is None and b["step_ratio/a"] is None  # Adam + L2: no prediction
