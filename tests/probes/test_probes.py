"""Probes observe and change nothing (runner.probes): a run trains bit for bit the same with all of
them on as with all of them off, and each adds only its own figures."""

import pytest
import torch
from conftest import TINY, compose_cfg

from runner.config import validate
from runner.engine.checkpoint import load_latest
from runner.engine.records import read_metrics
from runner.engine.train import train

ALL = ["probes.equilibrium", "probes.step_angle", "probes.l2_terms", "probes.bn_staleness"]
SHADOWS = "[0.03,0.3]"


def trained(folder, on: bool):
    over = [f"{p}={str(on).lower()}" for p in ALL]
    over.append(f"probes.shadow_bn={SHADOWS if on else '[]'}")
    cfg = validate(
        compose_cfg(
            *TINY,
            "optimizer=adam_l2",
            "data.n_train=128",
            "data.n_val=64",
            "batch_size=32",
            "trainer.log_every=2",
            "trainer.val_every=3",
            "trainer.bn_recalibrate=64",
            *over,
        )
    )
    train(cfg, folder)
    return load_latest(folder / "checkpoints")[0], read_metrics(folder / "metrics.jsonl")


def test_a_run_trains_bit_for_bit_the_same_with_every_probe_on_or_off(tmp_path):
    on, on_records = trained(tmp_path / "on", True)
    off, off_records = trained(tmp_path / "off", False)
    for key, value in off["model"].items():
        assert torch.equal(value, on["model"][key]), key
    losses = [
        [r["train_loss"] for r in recs if "train_loss" in r] for recs in (on_records, off_records)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 8
    keys = [set().union(*(r.keys() for r in recs)) for recs in (on_records, off_records)]
    added = keys[0] - keys[1]
    assert {
        "rotation/stages.1",
        "angular_update_step/stages.1",
        "l2_update_ratio/stem",
        "bn_lag_mu_mean",
        "val_loss_recal_aug",
        "val_loss_shadow@0.03",
        "bn_lag_rms@0.3/stages.2",
        "bn_lag_pred_rms/stem",
        "bn_drift_mu/stages.0",
    } <= added
    assert all(
        k.split("/")[0].startswith(("weight_norm", "rotation", "angular", "l2_", "bn_", "val_"))
        for k in added
    )
    assert set(on["probes"]) == {
        "equilibrium",
        "step_angle",
        "l2_terms",
        "bn_staleness",
        "shadow_bn",
    }
    assert off["probes"] == {}


def shadowed(folder, *extra):
    """A tiny run whose one shadow set has the model's own momentum (debug=tiny: 0.1)."""
    cfg = validate(
        compose_cfg(
            *TINY,
            "data.n_train=128",
            "data.n_val=64",
            "batch_size=32",
            "trainer.val_every=4",
            "trainer.bn_recalibrate=64",
            "probes.shadow_bn=[0.1,0.5]",
            *extra,
        )
    )
    train(cfg, folder)
    return [r for r in read_metrics(folder / "metrics.jsonl") if "val_loss_shadow@0.1" in r]


def test_a_shadow_set_at_the_models_own_momentum_is_the_running_statistics(tmp_path):
    """The known answer of the recovery b = (r_new − (1 − m₀)·r_old)/m₀: folded back in at m₀, the
    batches rebuild the running averages, so that shadow set evaluates and lags as they do."""
    vals = shadowed(tmp_path)
    assert len(vals) == 2
    for r in vals:
        assert r["val_loss_shadow@0.1"] == pytest.approx(r["val_loss_running"], rel=1e-4)
        assert r["bn_lag_rms@0.1"] == pytest.approx(r["bn_lag_rms"], rel=1e-3)
        assert r["bn_lag_rms@0.5"] != pytest.approx(r["bn_lag_rms"], rel=1e-2)  # another set


@pytest.mark.slow
@pytest.mark.compile
def test_shadow_statistics_work_the_same_under_torch_compile(tmp_path):
    """The probe reads the running buffers outside the model, which torch.compile's graph updates in
    place: the set at the model's momentum still rebuilds them."""
    for r in shadowed(tmp_path, "trainer.compile=true"):
        assert r["val_loss_shadow@0.1"] == pytest.approx(r["val_loss_running"], rel=1e-4)


CHAIN = ("angular_update_step", "bn_lag", "bn_noise", "bn_drift", "bn_ref", "val_loss_shadow")


def chain_records(folder) -> dict:
    return {
        (r["step"], k): v
        for r in read_metrics(folder / "metrics.jsonl")
        for k, v in r.items()
        if k.startswith(CHAIN)
    }


def test_a_continued_run_records_the_chain_as_the_straight_run_does(tmp_path):
    over = [
        *TINY,
        "data.n_train=128",
        "batch_size=16",
        "trainer.log_every=3",
        "trainer.val_every=4",
        "trainer.bn_recalibrate=64",
        "probes.shadow_bn=[0.3]",
    ]
    train(validate(compose_cfg(*over)), tmp_path / "straight")
    train(validate(compose_cfg(*over, "trainer.max_steps=8")), tmp_path / "continued")
    train(validate(compose_cfg(*over)), tmp_path / "continued")  # from its epoch-end checkpoint
    straight, continued = (
        chain_records(tmp_path / "straight"),
        chain_records(tmp_path / "continued"),
    )
    assert {k for _, k in straight} >= {"angular_update_step/stem", "bn_lag_pred_rms@0.3"}
    assert any(step > 8 and k.startswith("bn_lag_pred") for step, k in straight)
    assert continued == straight
