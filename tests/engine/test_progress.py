"""What a person watching sees (runner.engine.progress): the bar's epoch and numbers, when they
change, and one line per epoch."""

import io
import logging
from types import SimpleNamespace

import pytest
import torch
from tqdm import tqdm

from runner.core.headline import Headline
from runner.engine.progress import Progress, epoch_line
from runner.engine.state import LoopStats, RunState, StepRecord

SPE = 4  # steps per epoch


class Unreadable:
    """A device value the host must not read between log points (on a GPU each read waits)."""

    def item(self):
        raise AssertionError("a device value was read on the host between log points")


def fake_run(device="cpu", log_every=50, total=3 * SPE):
    return SimpleNamespace(
        device=torch.device("cpu") if device == "cpu" else SimpleNamespace(type=device),
        state=RunState(),
        stats=LoopStats(),
        steps_per_epoch=SPE,
        total=total,
        headline=Headline(recalibrated=True),
        cfg=SimpleNamespace(trainer=SimpleNamespace(log_every=log_every)),
        out=SimpleNamespace(log=logging.getLogger("runner.test_progress")),
    )


def shown(run) -> tuple[Progress, tqdm]:
    bar = tqdm(total=run.total, file=io.StringIO(), mininterval=0)
    return Progress(run, bar), bar


def step(run, progress, loss, correct, images=10, lr=1e-3):
    """What the loop's note_step does: a pending record, the step count, the bar."""
    value = Unreadable() if loss is None else torch.tensor(loss)
    count = Unreadable() if loss is None else torch.tensor(correct)
    run.stats.pending.append(StepRecord(run.state.step + 1, lr, 0.0, value, count, images, None))
    run.state.step += 1
    progress.step()


def log_point(run, progress, losses, corrects, images=10):
    """What the loop's log_point and write_steps do: the read records summed into the epoch."""
    s = run.state
    s.epoch_loss_sum += sum(losses)
    s.epoch_steps += len(losses)
    s.epoch_correct += sum(corrects)
    s.epoch_seen += images * len(losses)
    run.stats.pending = []
    progress.log_point(losses[-1], 1e-3)


def val_record(step, acc, loss):
    return {
        "step": step,
        "epoch": step / SPE,
        "val_acc_running": acc - 0.1,
        "val_loss_running": loss + 1,
        "val_acc_recal": acc,
        "val_loss_recal": loss,
        "val_acc": acc,
        "val_loss": loss,
    }


def test_on_a_cpu_the_bar_shows_the_epochs_mean_loss_and_accuracy_after_every_step():
    run = fake_run(device="cpu", log_every=50)
    progress, bar = shown(run)
    step(run, progress, 2.0, 3)
    assert bar.postfix.startswith("loss=2.000, acc=0.300, lr=1.00e-03")
    step(run, progress, 1.0, 5)  # no log point yet: the bar read the CPU values itself
    assert bar.postfix.startswith("loss=1.500, acc=0.400")
    assert bar.desc.startswith("epoch 1/3")
    log_point(run, progress, [2.0, 1.0], [3, 5])
    step(run, progress, 0.0, 10)
    assert bar.postfix.startswith("loss=1.000, acc=0.600")  # (2 + 1 + 0) / 3, 18 / 30


def test_on_a_gpu_the_bar_reads_nothing_between_log_points_and_its_numbers_come_with_them():
    run = fake_run(device="cuda")
    progress, bar = shown(run)
    step(run, progress, None, None)  # Unreadable: reading it fails the test
    step(run, progress, None, None)
    assert bar.n == 2 and bar.desc.startswith("epoch 1/3") and not bar.postfix
    log_point(run, progress, [2.0, 1.0], [3, 5])
    assert bar.postfix.startswith("loss=1.500, acc=0.400, lr=1.00e-03, val_loss=-, val_acc=-")
    for _ in range(3):
        step(run, progress, None, None)
    assert bar.desc.startswith("epoch 2/3")  # step 5 of 4 a epoch


def test_a_validation_shows_on_the_bar_at_once_and_the_last_one_stays_at_the_end():
    run = fake_run(device="cpu")
    progress, bar = shown(run)
    step(run, progress, 2.0, 3)
    progress.validation(val_record(1, 0.246, 1.9))
    assert "val_loss=1.900, val_acc=0.246" in bar.postfix
    step(run, progress, 1.0, 5)
    assert "val_acc=0.246" in bar.postfix  # kept while training goes on
    progress.validation(val_record(2, 0.292, 1.7))
    bar.close()
    assert bar.postfix.endswith("val_loss=1.700, val_acc=0.292")  # the final validation's


def test_the_headline_is_the_running_evaluation_when_recalibration_is_off():
    run = fake_run()
    run.headline = Headline(recalibrated=False)
    progress, bar = shown(run)
    rec = {k: v for k, v in val_record(1, 0.5, 1.0).items() if "recal" not in k}
    progress.validation(rec)
    assert "val_loss=2.000, val_acc=0.400" in bar.postfix  # the _running pair


@pytest.mark.parametrize("with_bar", [True, False])
def test_one_line_per_epoch_with_or_without_a_bar(with_bar, caplog):
    run = fake_run()
    progress, _ = shown(run) if with_bar else (Progress.quiet(run), None)
    for loss in (2.0, 1.0, 1.0, 0.0):
        step(run, progress, loss, 4)
    log_point(run, progress, [2.0, 1.0, 1.0, 0.0], [4, 4, 4, 4])
    run.state.last_val = val_record(4, 0.61, 1.1)
    run.stats.val_times.append(3.14)
    with caplog.at_level(logging.INFO, logger="runner"):
        progress.epoch_end(
            {"step": 4, "epoch": 1.0, "epoch_train_s": 2.0, "epoch_images": 40, "train_acc": 0.4}
        )
    line = caplog.records[-1].getMessage()
    assert line == (
        "epoch 1/3: train_loss 1.0000 train_acc 0.4000 | val_loss 1.1000 val_acc 0.6100 "
        "| 2.0 s training (20 images/s), 3.1 s validation"
    )


def test_an_epoch_without_a_validation_says_none_and_one_in_its_middle_says_where():
    run = fake_run()
    rec = {"step": 8, "epoch": 2.0, "epoch_train_s": 1.0, "epoch_images": 40}
    run.state.last_val = val_record(4, 0.5, 1.0)  # the previous epoch's
    assert "val" not in epoch_line(run, rec, None)
    run.state.last_val = val_record(6, 0.5, 1.0)
    assert "val_acc 0.5000 (at epoch 1.50)" in epoch_line(run, rec, 0.5)
