"""Training time told honestly (runner.engine.timing): the steady rate, with start-up and stalls
reported beside it."""

import json

import pytest
from conftest import TINY, compose_cfg

from runner.config import validate
from runner.engine.records import read_metrics
from runner.engine.timing import LoopClock, Window, split_time, steady_rate


def test_the_steady_rate_ignores_start_up_windows_and_a_stall():
    # a 50 s stall
    windows = [
        Window(64, 20.0, startup=True),  # compilation
        *[Window(640, 1.0, startup=False)] * 9,
        Window(640, 51.0, startup=False),
    ]
    t = split_time(windows)
    assert steady_rate(windows) == t["images_per_s"] == 640.0
    assert t["startup_s"] == pytest.approx(20.0 - 0.1)
    assert t["stall_s"] == pytest.approx(50.0)
    assert t["train_time_s"] == pytest.approx(20.0 + 9 + 51)
    assert t["images_per_s_overall"] == pytest.approx((64 + 6400) / 80.0)
    # the parts add up: start-up + images at the steady rate + stall = all the training time
    assert t["startup_s"] + (64 + 6400) / 640 + t["stall_s"] == pytest.approx(t["train_time_s"])


def test_the_steady_rate_is_the_image_weighted_median():
    assert (
        steady_rate([Window(100, 1.0, False), Window(300, 1.0, False), Window(100, 0.5, False)])
        == 300.0
    )
    # nothing but start-up: no steady rate to claim
    assert steady_rate([Window(64, 3.0, True)]) is None
    assert split_time([Window(64, 3.0, True)])["stall_s"] is None


def test_the_clock_closes_a_window_only_when_it_trained_something():
    clock = LoopClock()
    assert clock.lap() is None
    clock.add(32, startup=True)
    clock.add(32)
    w = clock.lap()
    assert (w.images, w.startup) == (64, True) and clock.windows == [w]
    clock.add(32)
    assert not clock.lap().startup


def test_a_run_with_an_injected_stall_reports_it_apart_from_the_steady_rate(tmp_path, monkeypatch):
    """A 1.5 s pause inside one step: images_per_s stays the steady rate, stall_s holds the pause,
    and the epoch records and the summary's parts add up to the training time. The loop's clock is
    a fake one that each step moves by 10 ms (and the pause by 1.5 s), so no load on the machine
    changes what is measured."""
    import runner.engine.build as build_mod
    import runner.engine.loop as loop_mod
    from runner.engine.state import LoopStats
    from runner.engine.timing import LoopClock
    from runner.engine.train import train

    fake, real = [0.0], loop_mod.note_step

    def timed_step(run, *a):
        fake[0] += 0.01 + (1.5 if run.state.step == 10 else 0.0)
        return real(run, *a)

    def stats(t_start):
        return LoopStats(clock=LoopClock(now=lambda: fake[0]), t_start=t_start)

    monkeypatch.setattr(loop_mod, "note_step", timed_step)
    monkeypatch.setattr(build_mod, "LoopStats", stats)
    cfg = validate(compose_cfg(*TINY, "batch_size=32", "epochs=2", "trainer.log_every=4"))
    s = train(cfg, tmp_path)
    assert s["stall_s"] == pytest.approx(1.5)
    assert s["images_per_s"] == pytest.approx(32 / 0.01)  # the pause is not in the steady rate
    assert s["images_per_s"] > s["images_per_s_overall"]  # but in the overall one
    parts = s["startup_s"] + s["steps"] * 32 / s["images_per_s"] + s["stall_s"]
    assert parts == pytest.approx(s["train_time_s"], rel=1e-6)
    assert s["startup"]["first_step_s"] > 0 and s["startup"]["capture_s"] == 0  # no graphs on CPU
    epochs = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "epoch_train_s" in r]
    assert [(r["step"], r["epoch_images"]) for r in epochs] == [(16, 512), (32, 512)]
    assert epochs[0]["epoch_train_s"] == pytest.approx(16 * 0.01 + 1.5)  # the pause: epoch 1
    assert sum(r["epoch_train_s"] for r in epochs) == pytest.approx(s["train_time_s"], rel=1e-6)
    assert json.loads((tmp_path / "summary.json").read_text())["stall_s"] == s["stall_s"]


class FakeClock:
    """A host clock that a test moves by hand: a slow, uneven host and a stall, without sleeping."""

    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def clocked_run(step_seconds: list[float], startup_steps: int = 1, lap_every: int = 4) -> dict:
    """split_time of a run whose step i takes step_seconds[i] on the fake clock (32 images each),
    the clock read every `lap_every` steps and after each start-up step, as the loop reads it."""
    fake = FakeClock()
    clock = LoopClock(now=fake)
    for i, sec in enumerate(step_seconds):
        fake.t += sec
        clock.add(32, startup=i < startup_steps)
        if i < startup_steps or (i + 1) % lap_every == 0:
            clock.lap()
    clock.lap()
    return split_time(clock.windows)


def test_the_timing_parts_add_up_to_the_training_time_on_a_loaded_machine_whose_speed_varies():
    """The case the old identity broke on: the windows' median rate is slower than their mean (a few
    fast windows among slow ones), so images / images_per_s alone exceeds the training time;
    steady_s absorbs it."""
    # the machine was quiet, then loaded (slow windows hold the median)
    fast, slow = (
        [0.01] * 20,
        [0.2] * 60,
    )
    t = clocked_run([3.0] + fast + slow)
    assert t["images_per_s"] == pytest.approx(32 / 0.2)
    # the old identity's overshoot
    assert 81 * 32 / t["images_per_s"] > t["train_time_s"] - t["startup_s"]
    assert t["startup_s"] + t["steady_s"] + t["stall_s"] == pytest.approx(
        t["train_time_s"], rel=1e-12
    )
    assert min(t["startup_s"], t["steady_s"], t["stall_s"]) >= 0 and t["stall_s"] == 0
    # the first step, less what a steady step takes
    assert t["startup_s"] == pytest.approx(3.0 - 0.2)


def test_a_slow_host_with_a_stall_reports_the_stall_and_the_parts_still_add_up():
    steps = [2.0] + [0.5] * 30  # a slow host: 64 img/s steady
    steps[12] += 7.0  # a 7 s stall inside one window
    t = clocked_run(steps)
    assert t["images_per_s"] == pytest.approx(64.0)
    assert t["stall_s"] == pytest.approx(7.0)
    # every image at the steady rate, the first one's too
    assert t["steady_s"] == pytest.approx(31 * 32 / 64.0)
    assert t["startup_s"] + t["steady_s"] + t["stall_s"] == pytest.approx(
        t["train_time_s"], rel=1e-12
    )
