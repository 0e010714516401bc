"""What a run records (runner.engine.records): metrics.jsonl's kinds of records and TensorBoard's HParams."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.engine.records import Recorder

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
