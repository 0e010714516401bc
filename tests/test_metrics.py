"""What a run records (runner.engine.records): metrics.jsonl's kinds of records and TensorBoard's HParams."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.engine.records import Recorder, read_metrics

CONFIG = {"lr": 1e-3, "optimizer": {"name": "adamw"}, "betas": [0.9, 0.999]}


def hparams_tags(run_dir) -> set:
    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return set(ea.PluginTagToContent("hparams"))


def test_a_running_or_killed_run_already_shows_its_hyperparameters(tmp_path):
    """pytorch issue 32651: add_hparams writes a separate run; the runner writes into the run's own event file,
    at the start, so TensorBoard's HParams tab lists a run that is still going (or was killed)."""
    rec = Recorder(tmp_path)
    rec.start(CONFIG, {"optimizer": "adamw"})
    assert hparams_tags(tmp_path) == {"_hparams_/experiment", "_hparams_/session_start_info"}  # no end yet
    rec.write({"step": 1, "epoch": 0.1, "train_loss": 2.3})
    rec.finish({"status": "completed", "steps": 1, "best_val_acc": 0.5, "val_metric": "recalibrated"})
    assert "_hparams_/session_end_info" in hparams_tags(tmp_path)
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert ea.Scalars("hparams/best_val_acc")[0].value == pytest.approx(0.5)


def test_a_continued_run_skips_every_kind_of_record_it_already_has(tmp_path):
    rec = Recorder(tmp_path, tensorboard=False)
    for r in (
        {"step": 1, "epoch": 0.5, "train_loss": 2.0},
        {"step": 2, "epoch": 1.0, "train_loss": 1.9},
        {"step": 2, "epoch": 1.0, "val_loss": 2.1, "val_acc": 0.2},
        {"step": 2, "epoch": 1.0, "epoch_train_s": 3.0, "epoch_images": 64},
    ):
        rec.write(r)
    rec.close()
    again = Recorder(tmp_path, resume_step=1, tensorboard=False)  # restarted from a checkpoint at step 1
    again.write({"step": 2, "epoch": 1.0, "train_loss": 1.9})
    again.write({"step": 2, "epoch": 1.0, "epoch_train_s": 2.5, "epoch_images": 32})
    again.write({"step": 3, "epoch": 1.5, "train_loss": 1.8})
    again.close()
    steps = [(r["step"], "epoch_train_s" in r, "val_loss" in r) for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert steps == [(1, False, False), (2, False, False), (2, False, True), (2, True, False), (3, False, False)]
