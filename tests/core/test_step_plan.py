"""The step plan: one decision of what step k applies, read by the eager step and the graph
alike."""

import math

import pytest
from conftest import compose_cfg

from runner.config import ScheduleConfig, validate
from runner.core.schedules import make_schedule
from runner.core.step_plan import (
    StepPlan,
    decoupled_rate,
    describe,
    effective_decay,
    plan_steps,
    timescale,
    timescales,
)


def test_the_plan_gives_lr_t_and_d_t_of_every_step_by_the_paper_scaling():
    cfg = validate(
        compose_cfg("optimizer=adamw", "lr=1e-3", "wd=5e-4", "epochs=4", "schedule=cosine")
    )
    plan = plan_steps(cfg, n_train=400, steps_per_epoch=10, schedule_epochs=4)
    assert len(plan.lr) == len(plan.d) == 40
    for k in (0, 7, 25, 39):
        eta = plan.schedule(k / 10)
        assert plan.at(k) == (1e-3 * eta, eta * 5e-4)  # wd_scaling=schedule: d_t = η_t·λ


def test_a_plan_without_decay_applies_none_and_l2_is_normalized_on_request():
    cfg = validate(
        compose_cfg("optimizer=adam_l2", "l2=0.05", "optimizer.l2_normalized=true", "epochs=2")
    )
    plan = plan_steps(cfg, n_train=400, steps_per_epoch=4, schedule_epochs=2)
    assert set(plan.d) == {0.0}
    assert plan.l2 == pytest.approx(0.05 * (cfg.batch_size / (400 * 2)) ** 0.5)


def test_a_held_schedule_keeps_the_last_planned_step_beyond_its_epochs():
    cfg = validate(compose_cfg("optimizer=adamw", "epochs=4", "schedule=cosine", "wd=1e-3"))
    # laid out for 2, run for 4
    plan = plan_steps(cfg, n_train=400, steps_per_epoch=10, schedule_epochs=2)
    assert (
        plan.lr[19] != plan.lr[0]
        and plan.lr[20:] == [plan.lr[19]] * 20
        and plan.d[20:] == [plan.d[19]] * 20
    )


@pytest.mark.parametrize("scaling", ["schedule", "lr", "none"])
def test_wd_tau_sets_lambda_so_the_decays_timescale_is_that_fraction_of_the_run(scaling):
    over = ["optimizer=adamw", "lr=2e-3", "epochs=4", "schedule=cosine", "optimizer.wd_tau=0.25"]
    cfg = validate(compose_cfg(*over, f"optimizer.wd_scaling={scaling}"))
    plan = plan_steps(cfg, n_train=1000, steps_per_epoch=10, schedule_epochs=4)
    assert timescale(plan, 40, "adam", 0.9)["tau_fraction"] == pytest.approx(0.25)
    rate = decoupled_rate(plan.wd, scaling, cfg.lr)
    assert plan.wd != cfg.wd and plan.d[5] == pytest.approx(rate(0.5, plan.schedule(0.5)))


def test_wd_tau_is_refused_where_it_has_no_decoupled_decay_to_set():
    from runner.config import ConfigError

    with pytest.raises(ConfigError, match=r"^wd=0\.0 is invalid: .*optimizer=adamw or sgdw"):
        validate(compose_cfg("optimizer=adam_l2", "optimizer.wd_tau=0.1"))
    with pytest.raises(ConfigError, match=r"^optimizer.wd_tau=0.1 is invalid: sets λ itself"):
        validate(
            compose_cfg("optimizer=adamw", "optimizer.wd_tau=0.1", "optimizer.wd_normalized=true")
        )
    with pytest.raises(
        ConfigError, match=r"^optimizer.wd_tau=-1.0 is invalid: must be a finite number > 0"
    ):
        validate(compose_cfg("optimizer=adamw", "optimizer.wd_tau=-1"))

    cfg = validate(compose_cfg("optimizer=adamw", "epochs=2", "optimizer.wd_tau=0.01"))
    with pytest.raises(
        ConfigError, match=r"^optimizer.wd_tau=0.01 makes the per-step shrink d_t reach .*raise"
    ):
        plan_steps(cfg, n_train=100, steps_per_epoch=10, schedule_epochs=2)  # τ = 0.2 steps


def test_normalized_lambda_matches_the_hand_computation():
    # λ = λ_norm·√(b/(B·T)): b=128, B=50000, T=100 → 0.05·√(128/5e6)
    d = decoupled_rate(
        0.05,
        "schedule",
        1e-3,
        normalized=True,
        batch_size=128,
        n_train=50000,
        period=lambda t: 100.0,
    )
    assert d(0.0, 1.0) == pytest.approx(0.05 * math.sqrt(128 / 5_000_000))
    assert d(0.0, 1.0) == pytest.approx(2.5298e-4, rel=1e-4)
    d = decoupled_rate(
        0.05,
        "lr",
        1e-3,
        normalized=True,
        batch_size=128,
        n_train=50000,
        period=lambda t: 10.0 if t < 10 else 20.0,
    )
    assert d(15.0, 0.5) == pytest.approx(1e-3 * 0.5 * 0.05 * math.sqrt(128 / 1e6))


def test_the_printed_sentences_say_which_rule_ran():
    cfg = validate(compose_cfg("optimizer=adamw", "wd=5e-4", "epochs=2"))
    plan = plan_steps(cfg, n_train=400, steps_per_epoch=4, schedule_epochs=2)
    assert describe(plan, cfg, n_tensors=58, n_values=1_640_000) == [
        "decoupled decay: θ ← θ·(1 − η_t·0.0005) on 58 tensors (1.64 M values) "
        "(wd_scaling=schedule)",
        "L2: off",
    ]
    cfg = validate(
        compose_cfg("optimizer=adam_l2", "l2=2e-4", "optimizer.wd_scaling=lr", "epochs=2")
    )
    s = describe(plan_steps(cfg, 400, 4, 2), cfg, n_tensors=3, n_values=10)
    assert s[0] == "decoupled decay: off" and "g ← g + 0.0002·θ" in s[1] and "√v̂" in s[1]


@pytest.mark.parametrize("override", ["wd=1", "optimizer.wd_scaling=lr lr=1 wd=1.5"])
def test_a_plan_that_would_shrink_the_weights_by_all_of_themselves_is_refused(override):
    from runner.config import ConfigError

    cfg = validate(compose_cfg("optimizer=adamw", "optimizer.wd_scaling=none", *override.split()))
    with pytest.raises(
        ConfigError, match=r"makes the per-step shrink d_t reach 1(\.5)? .*zeroes or flips"
    ):
        plan_steps(cfg, n_train=400, steps_per_epoch=4, schedule_epochs=cfg.epochs)


def plan_of(lrs, decays, l2=0.0):
    return StepPlan(
        schedule=None, wd=max(decays), l2=l2, lam_now=None, lr=lrs, d=decays, steps_per_epoch=1
    )


def test_effective_decay_is_each_rules_own_shrink():
    assert effective_decay("adam", 1e-3, 0.1, 0.0, 0.9) == 1e-3
    assert effective_decay("sgd", 0.0, 0.1, 5e-4, 0.9) == pytest.approx(0.1 * 5e-4 / 0.1)
    assert effective_decay("adam", 0.0, 0.1, 5e-4, 0.9) is None  # Adam + L2: no shrink


def test_the_timescale_of_a_plan_uses_each_rules_own_shrink():
    both = timescale(plan_of([0.1] * 2, [1e-3, 3e-3]), 2, "adam", 0.9)
    assert both["tau_steps"] == pytest.approx(500) and both["tau_fraction"] == pytest.approx(250)
    assert both["tau_iter_wa"] == pytest.approx(1e3)  # the first step: the peak lr (a tie)
    flat = timescale(plan_of([0.1] * 4, [1e-3] * 4), 4, "adam", 0.9)
    assert flat["tau_steps"] == pytest.approx(1e3) and flat["tau_fraction"] == 250.0
    sgd_l2 = timescale(plan_of([0.1] * 4, [0.0] * 4, l2=1e-3), 4, "sgd", 0.9)
    assert sgd_l2["tau_steps"] == pytest.approx(1 / (0.1 * 1e-3 / 0.1))
    adam_l2 = timescale(plan_of([0.1] * 4, [0.0] * 4, l2=1e-3), 4, "adam", 0.9)
    assert set(adam_l2) >= {"tau_steps", "tau_iter_wa"} and set(adam_l2.values()) == {None}


def test_timescales_in_both_conventions():
    # constant schedule, constant d = 1e-3, 100 steps an epoch, 1,000 steps: both conventions agree
    t = timescales([0.1] * 1000, [1e-3] * 1000, 100)
    assert t["tau_steps"] == pytest.approx(1000) and t["tau_iter_wa"] == pytest.approx(1000)
    assert t["tau_epochs"] == pytest.approx(10) and t["tau_fraction"] == pytest.approx(1.0)
    assert not t["below_one_epoch"] and not t["above_run"]
    # d_t ∝ η_t (wd_scaling=schedule) under cosine with one warm-up epoch of 20
    # (experiment=oscillation_study): the mean η_t is ≈ 0.47, so the runner's tau_steps is ≈ 2.1 ×
    # Wang & Aitchison's 1/(η_peak·λ)
    spe, epochs, lam = 100, 20, 0.05
    plain = ScheduleConfig(shape="warm_restarts", unit="epoch", warmup_epochs=1.0)
    cosine = make_schedule(plain, epochs)
    etas = [cosine(k / spe) for k in range(epochs * spe)]
    t = timescales([2e-3 * e for e in etas], [lam * e for e in etas], spe)
    assert t["tau_iter_wa"] == pytest.approx(1 / (lam * max(etas)))
    assert t["tau_steps"] / t["tau_iter_wa"] == pytest.approx(max(etas) * len(etas) / sum(etas))
    assert t["tau_steps"] / t["tau_iter_wa"] == pytest.approx(2.1, abs=0.02)
    # τ/T = 0.03 on this plan (the shortest arm of experiment=oscillation_study): under one epoch in
    # both
    short = timescales([2e-3 * e for e in etas], [e / (0.03 * sum(etas)) for e in etas], spe)
    assert short["tau_fraction"] == pytest.approx(0.03)
    assert short["tau_epochs"] == pytest.approx(0.6) and short["below_one_epoch"]
    assert timescales([0.1] * 4, [0.0] * 4, 2) == {}
