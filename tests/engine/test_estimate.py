"""A CPU run's estimate before it starts (runner.engine.estimate): its arithmetic, its line, and a
measurement that leaves the run as it was."""

from types import SimpleNamespace

import pytest
import torch

from runner.core.models import build_resnet
from runner.engine import estimate
from runner.engine.state import RunState


def fake_run(total=390 * 30, step=0, val_every=390, batch_size=128, recal=2048, n_val=10_000):
    loaders = [("val", SimpleNamespace(y=torch.zeros(n_val)))]
    return SimpleNamespace(
        total=total,
        state=RunState(step=step),
        val_every=val_every,
        cfg=SimpleNamespace(batch_size=batch_size),
        data=SimpleNamespace(
            evals=SimpleNamespace(items=lambda: loaders),
            recal_images=torch.zeros(recal, 1) if recal else None,
            inference=SimpleNamespace(image_size=[3, 32, 32]),
        ),
    )


@pytest.mark.parametrize(
    "step, total, every, n",
    [(0, 32, 16, 2), (0, 30, 16, 2), (16, 32, 16, 1), (20, 30, 16, 1), (32, 32, 16, 0)],
)
def test_validations_left_count_every_val_every_steps_and_the_last(step, total, every, n):
    assert estimate.validations_left(step, total, every) == n


def test_the_run_takes_its_steps_and_its_validations_at_the_measured_rates():
    run = fake_run(total=100, step=50, val_every=25, batch_size=10, recal=30, n_val=200)
    # 50 steps of 10 images at 2 s, 2 validations of 2 × 200 + 30 images at 1 s
    assert estimate.run_seconds(run, 2.0, 1.0) == 50 * 10 * 2 + 2 * 430
    run = fake_run(total=100, step=50, val_every=25, batch_size=10, recal=0, n_val=200)
    assert estimate.run_seconds(run, 2.0, 1.0) == 50 * 10 * 2 + 2 * 200  # no recalibration


@pytest.mark.parametrize(
    "seconds, shown", [(0.2, "1 s"), (40, "40 s"), (89, "89 s"), (720, "12 min"), (11160, "3.1 h")]
)
def test_durations_are_as_precise_as_an_estimate_deserves(seconds, shown):
    assert estimate.duration(seconds) == shown


def test_a_long_run_says_how_long_and_how_to_get_a_quick_look(monkeypatch):
    monkeypatch.setattr(estimate, "measure", lambda run: (7.5e-3, 2.5e-3))
    line = estimate.line(fake_run())  # 11700·128·7.5 ms + 30·(2·10000 + 2048)·2.5 ms = 3.58 h
    assert line.startswith("about 3.6 h on this CPU (11700 steps of 128 images, 30 validations")
    assert "7.50 ms a training image" in line
    assert line.endswith("; " + estimate.QUICK_LOOK)
    assert "experiment=cpu_quick" in line and "debug=smoke" in line


def test_a_short_run_says_how_long_only(monkeypatch):
    monkeypatch.setattr(estimate, "measure", lambda run: (1e-4, 5e-5))
    line = estimate.line(fake_run(total=48, val_every=16, batch_size=32, recal=256, n_val=200))
    assert line.startswith("about 1 s on this CPU") and "quick look" not in line


def test_measuring_leaves_the_runs_model_and_random_numbers_as_they_were():
    torch.manual_seed(0)
    model = build_resnet(20, 1)
    run = fake_run(batch_size=8)
    run.device = torch.device("cpu")
    run.trainee = SimpleNamespace(model=model, autocast=torch.autocast("cpu", enabled=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    train_s, eval_s = estimate.measure(run)
    assert train_s > 0 and eval_s > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert torch.equal(torch.get_rng_state(), rng)
