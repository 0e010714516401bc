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
    rec.write({"step": 1, "epoch": 0.1, "val_loss": 2.0, "val_acc": 0.5, "val_acc_running": 0.4})
    rec.write({"step": 2, "epoch": 0.2, "val_loss": 2.1, "val_acc": 0.3, "val_acc_running": 0.2})
    rec.finish({"status": "completed", "steps": 1, "best_val_acc": 0.5, "val_metric": "recalibrated"})
    assert "_hparams_/session_end_info" in hparams_tags(tmp_path)
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert [s.value for s in ea.Scalars("val/best_acc")] == pytest.approx([0.5, 0.5])  # a curve, not one dot
    assert [s.value for s in ea.Scalars("val/acc_running")] == pytest.approx([0.4, 0.2])
    assert not [t for t in ea.Tags()["scalars"] if t.startswith("hparams/")]  # no group of single-point charts


def test_hparams_columns_are_the_swept_keys_then_the_study_keys_and_nothing_else(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    config = {"lr": 1e-3, "wd": 5e-4, "l2": 0.0, "reg": None, "epochs": 2, "batch_size": 32, "seed": 1,
              "optimizer": {"name": "adamw", "eps": 1e-8}, "schedule": {"name": "warm_restarts"},
              "data": {"subset": 400, "name": "image_folder"}}  # fmt: skip
    rec = Recorder(tmp_path)
    rec.start(config, {"optimizer": "adamw", "schedule": "cosine", "data": "image_folder"}, ["seed", "data.subset"])
    rec.finish({"status": "completed"})
    ea = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [h.name for h in exp.hparam_infos] == ["seed", "data.subset", "optimizer", "lr", "wd", "l2", "schedule",
                                                  "epochs"]  # fmt: skip
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["schedule"].string_value == "cosine"  # the preset, not its shape warm_restarts
    assert [m.name.tag for m in exp.metric_infos] == ["val/acc", "val/best_acc", "val/loss", "train/loss"]
