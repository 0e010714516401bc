"""The step plan: one decision of what step k applies, read by the eager step and the graph alike."""

import pytest
from conftest import compose_cfg

from runner.config import validate
from runner.core.step_plan import plan_steps, steps_per_epoch


def test_the_plan_gives_lr_t_and_d_t_of_every_step_by_the_paper_scaling():
    cfg = validate(compose_cfg("optimizer=adamw", "lr=1e-3", "wd=5e-4", "epochs=4", "schedule=cosine"))
    plan = plan_steps(cfg, n_train=400, steps_per_epoch=10, schedule_epochs=4)
    assert len(plan.lr) == len(plan.d) == 40
    for k in (0, 7, 25, 39):
        eta = plan.schedule(k / 10)
        assert plan.at(k) == (1e-3 * eta, eta * 5e-4)  # wd_scaling=schedule: d_t = η_t·λ


def test_a_plan_without_decay_applies_none_and_l2_is_normalized_on_request():
    cfg = validate(compose_cfg("optimizer=adam_l2", "l2=0.05", "optimizer.l2_normalized=true", "epochs=2"))
    plan = plan_steps(cfg, n_train=400, steps_per_epoch=4, schedule_epochs=2)
    assert set(plan.d) == {0.0}
    assert plan.l2 == pytest.approx(0.05 * (cfg.batch_size / (400 * 2)) ** 0.5)


def test_a_held_schedule_keeps_the_last_planned_step_beyond_its_epochs():
    cfg = validate(compose_cfg("optimizer=adamw", "epochs=4", "schedule=cosine", "wd=1e-3"))
    plan = plan_steps(cfg, n_train=400, steps_per_epoch=10, schedule_epochs=2)  # laid out for 2, run for 4
    assert plan.lr[19] != plan.lr[0] and plan.lr[20:] == [plan.lr[19]] * 20 and plan.d[20:] == [plan.d[19]] * 20


def test_steps_per_epoch_counts_the_remainder_unless_dropped():
    assert steps_per_epoch(500, 64, drop_last=True) == 7 and steps_per_epoch(500, 64, drop_last=False) == 8


@pytest.mark.parametrize("scaling", ["schedule", "lr", "none"])
def test_wd_tau_sets_lambda_so_the_decays_timescale_is_that_fraction_of_the_run(scaling):
    from runner.core.equilibrium import ema_timescale

    over = ["optimizer=adamw", "lr=2e-3", "epochs=4", "schedule=cosine", "optimizer.wd_tau=0.25"]
    cfg = validate(compose_cfg(*over, f"optimizer.wd_scaling={scaling}"))
    plan = plan_steps(cfg, n_train=1000, steps_per_epoch=10, schedule_epochs=4)
    assert ema_timescale(plan.d, 40)["tau_fraction"] == pytest.approx(0.25)
    assert plan.wd != cfg.wd and plan.d[5] == pytest.approx(plan.decay(0.5, plan.schedule(0.5)))


def test_wd_tau_is_refused_where_it_has_no_decoupled_decay_to_set():
    from runner.config import ConfigError

    with pytest.raises(ConfigError, match=r"^wd=0\.0 is invalid: .*optimizer=adamw or sgdw"):
        validate(compose_cfg("optimizer=adam_l2", "optimizer.wd_tau=0.1"))
    with pytest.raises(ConfigError, match=r"^optimizer.wd_tau=0.1 is invalid: sets λ itself"):
        validate(compose_cfg("optimizer=adamw", "optimizer.wd_tau=0.1", "optimizer.wd_normalized=true"))
    with pytest.raises(ConfigError, match=r"^optimizer.wd_tau=-1.0 is invalid: must be a finite number > 0"):
        validate(compose_cfg("optimizer=adamw", "optimizer.wd_tau=-1"))

    cfg = validate(compose_cfg("optimizer=adamw", "epochs=2", "optimizer.wd_tau=0.01"))
    with pytest.raises(ConfigError, match=r"^optimizer.wd_tau=0.01 gives a per-step shrink d_t up to .*raise"):
        plan_steps(cfg, n_train=100, steps_per_epoch=10, schedule_epochs=2)  # τ = 0.2 steps
