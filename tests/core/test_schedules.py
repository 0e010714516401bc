"""Schedules: pure functions of the fractional epoch, checked against hand-computed values."""

import pytest

from runner.config import ScheduleConfig
from runner.core.schedules import make_schedule, restart_start


def test_piecewise_constant_fractions_scale_with_epochs():
    s = make_schedule(ScheduleConfig(milestones=[0.5, 0.75], factors=[0.1, 0.01]), epochs=20)
    assert [s(t) for t in (0, 9.99, 10, 14.99, 15, 19.9)] == [1, 1, 0.1, 0.1, 0.01, 0.01]


def test_piecewise_constant_in_epochs_does_not_scale():
    s = make_schedule(
        ScheduleConfig(unit="epoch", milestones=[80, 120], factors=[0.1, 0.01]), epochs=100
    )
    assert (s(79.9), s(80), s(99)) == (1, 0.1, 0.1)


def test_piecewise_linear_interpolates_between_knots_and_holds_after():
    s = make_schedule(
        ScheduleConfig(shape="piecewise_linear", knots=[[0, 0.0], [0.1, 1.0], [1.0, 0.0]]),
        epochs=10,
    )
    assert s(0) == 0 and s(0.5) == pytest.approx(0.5) and s(1) == pytest.approx(1.0)
    assert s(5.5) == pytest.approx(0.5) and s(10) == 0 and s(12) == 0


def test_cosine_is_warm_restarts_with_one_period():
    s = make_schedule(
        ScheduleConfig(shape="warm_restarts", T_0=None, T_mult=1, eta_min=0.0), epochs=8
    )
    assert s(0) == 1 and s(4) == pytest.approx(0.5) and s(8 - 1e-9) == pytest.approx(0, abs=1e-12)
    assert s.period(3.0) == 8


def test_warm_restarts_restart_at_T0_times_partial_sums_of_T_mult():
    s = make_schedule(
        ScheduleConfig(shape="warm_restarts", unit="epoch", T_0=2, T_mult=2, eta_min=0.1), epochs=30
    )
    # T_0, T_0(1+T_mult), T_0(1+T_mult+T_mult²)
    for restart, length in (
        (0, 2),
        (2, 4),
        (6, 8),
        (14, 16),
    ):
        assert s(restart) == pytest.approx(1.0)
        assert restart_start(restart + 0.5, 2, 2) == pytest.approx((restart, length))
        assert s.period(restart + 0.5) == pytest.approx(length)
        mid = restart + length / 2
        assert s(mid) == pytest.approx(0.1 + 0.9 * 0.5)
        # continuous down to eta_min
        assert s(restart + length - 1e-9) == pytest.approx(0.1, abs=1e-9)


def test_warm_restart_is_continuous_inside_a_period():
    s = make_schedule(
        ScheduleConfig(shape="warm_restarts", unit="epoch", T_0=3, T_mult=1.5, eta_min=0), epochs=20
    )
    ts = [k / 100 for k in range(1, 2000)]
    restarts = {3.0, 7.5, 14.25}
    for a, b in zip(ts, ts[1:]):
        if not any(a < r <= b for r in restarts):
            assert abs(s(a) - s(b)) < 0.06


def test_warmup_scales_the_start_linearly():
    s = make_schedule(ScheduleConfig(milestones=[0.5], factors=[0.1], warmup_epochs=2), epochs=10)
    assert (s(0), s(1), s(2), s(6)) == (0, 0.5, 1, 0.1)
