"""What a run records (runner.engine.records): metrics.jsonl's kinds of records and TensorBoard's
HParams."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from runner.engine.records import Recorder, read_metrics

CONFIG = {"lr": 1e-3, "optimizer": {"name": "adamw"}, "betas": [0.9, 0.999]}


def hparams_tags(run_dir) -> set:
    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return set(ea.PluginTagToContent("hparams"))


def test_a_running_or_killed_run_already_shows_its_hyperparameters(tmp_path):
    """pytorch issue 32651: add_hparams writes a separate run; the runner writes into the run's own
    event file, at the start, so TensorBoard's HParams tab lists a run that is still going (or was
    killed)."""
    rec = Recorder(tmp_path)
    rec.start(CONFIG, {"optimizer": "adamw"})
    # no end yet
    assert hparams_tags(tmp_path) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
    }
    rec.write({"step": 1, "epoch": 0.1, "train_loss": 2.3})
    rec.write({"step": 1, "epoch": 0.1, "val_loss": 2.0, "val_acc": 0.5, "val_acc_running": 0.4})
    rec.write({"step": 2, "epoch": 0.2, "val_loss": 2.1, "val_acc": 0.3, "val_acc_running": 0.2})
    rec.finish(
        {"status": "completed", "steps": 1, "best_val_acc": 0.5, "val_metric": "recalibrated"}
    )
    assert "_hparams_/session_end_info" in hparams_tags(tmp_path)
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    best = [s.value for s in ea.Scalars("acc/val_best")]
    assert best == pytest.approx([0.5, 0.5])  # a curve, not a dot
    assert [s.value for s in ea.Scalars("acc/val_running")] == pytest.approx([0.4, 0.2])
    # no group of single-point charts
    assert not [t for t in ea.Tags()["scalars"] if t.startswith("hparams/")]


def hparams_of(run_dir):
    """(the HParams experiment, the run's session start) as its event file holds them."""
    ea = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    read = plugin_data_pb2.HParamsPluginData.FromString
    return read(content["_hparams_/experiment"]).experiment, read(
        content["_hparams_/session_start_info"]
    ).session_start_info


STUDY = {
    "lr": 1e-3,
    "wd": 5e-4,
    "l2": 0.0,
    "reg": None,
    "epochs": 2,
    "batch_size": 32,
    "seed": 1,
    "model": {"depth": 20, "version": 1},
    "optimizer": {"name": "adamw", "eps": 1e-8},
    "schedule": {"name": "warm_restarts"},
    "data": {"subset": 400, "name": "image_folder"},
}
CHOICES = {"optimizer": "adamw", "schedule": "cosine", "data": "image_folder"}
CHOICES["model"] = "resnet20v1"


def test_hparams_columns_are_the_swept_keys_then_what_trained_on_what_and_nothing_else(tmp_path):
    rec = Recorder(tmp_path)
    rec.start(STUDY, CHOICES, ["seed", "data.subset"])
    rec.finish({"status": "completed"})
    exp, start = hparams_of(tmp_path)
    study = ["model", "data", "batch_size", "optimizer", "lr", "wd", "l2", "schedule", "epochs"]
    assert [h.name for h in exp.hparam_infos] == ["seed", "data.subset", *study]
    assert start.hparams["schedule"].string_value == "cosine"  # the preset, not its shape
    assert start.hparams["model"].string_value == "resnet20v1"
    assert start.hparams["data"].string_value == "image_folder"
    assert start.hparams["batch_size"].number_value == 32
    metrics = ["acc/val", "acc/val_best", "loss/val", "loss/train"]
    assert [m.name.tag for m in exp.metric_infos] == metrics


def test_tensorboard_lists_and_ticks_the_swept_keys_first(tmp_path):
    """TensorBoard's backend sorts the columns by `differs`, then by name, and its HParams tab ticks
    the first five: the swept keys are the ones that differ."""
    from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

    rec = Recorder(tmp_path)
    rec.start(STUDY, CHOICES, ["wd", "schedule"])
    exp, _ = hparams_of(tmp_path)
    _sort_and_reduce_to_hparams_limit(exp)
    assert [h.name for h in exp.hparam_infos][:2] == ["schedule", "wd"]
    assert [h.name for h in exp.hparam_infos if h.differs] == ["schedule", "wd"]


def test_the_trial_is_named_by_the_run_folder_as_the_run_prints_it(tmp_path, monkeypatch):
    """TensorBoard names a trial by its session group, else by the folder relative to --logdir
    ("." for `tensorboard --logdir outputs/latest`): the group is the whole run folder."""
    job = tmp_path / "multirun" / "2026-12-01" / "10-00-00_abc123" / "3_lr=0.001,wd=0.0005"
    monkeypatch.chdir(tmp_path)
    rec = Recorder(job)
    rec.start(STUDY, CHOICES, ["lr", "wd"])
    _, start = hparams_of(job)
    assert start.group_name == "multirun/2026-12-01/10-00-00_abc123/3_lr=0.001,wd=0.0005"
    monkeypatch.chdir(job)  # a folder above the run's: its whole path
    Recorder(tmp_path / "elsewhere").start(STUDY, CHOICES)
    assert hparams_of(tmp_path / "elsewhere")[1].group_name == str(tmp_path / "elsewhere")


def test_a_named_run_leads_with_its_name_and_its_trial_says_it_when_the_folder_does_not(
    tmp_path, monkeypatch
):
    """Single runs compared in one TensorBoard: the name is the column that tells them apart."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "2026-12-01" / "10-00-00_abc123_baseline"
    Recorder(run).start({**STUDY, "name": "baseline", "tags": ["a", "b"]}, CHOICES)
    exp, start = hparams_of(run)
    assert [(h.name, h.differs) for h in exp.hparam_infos][0] == ("name", True)
    assert [h.name for h in exp.hparam_infos][-1] == "tags"
    assert start.hparams["tags"].string_value == "a, b"
    assert start.group_name == "outputs/2026-12-01/10-00-00_abc123_baseline"
    Recorder(tmp_path / "mine").start({**STUDY, "name": "baseline"}, CHOICES)  # hydra.run.dir
    assert hparams_of(tmp_path / "mine")[1].group_name == "mine (baseline)"
    Recorder(tmp_path / "plain").start({**STUDY, "name": None, "tags": []}, CHOICES)
    names = [h.name for h in hparams_of(tmp_path / "plain")[0].hparam_infos]
    assert "name" not in names and "tags" not in names


def test_the_decay_as_applied_is_a_column_when_the_run_gives_it(tmp_path):
    """optimizer.wd_tau and wd_normalized set λ from other settings: `wd` alone does not say it."""
    rec = Recorder(tmp_path)
    rec.start(STUDY, CHOICES, [], applied={"wd_applied": 3e-4})
    exp, start = hparams_of(tmp_path)
    assert [h.name for h in exp.hparam_infos][-1] == "wd_applied"
    assert start.hparams["wd_applied"].number_value == pytest.approx(3e-4)


def scalar_groups(run_dir) -> list[str]:
    """The scalar groups in the order TensorBoard's Time Series shows them: tags sorted, grouped by
    what comes before the first "/"; it opens the first two."""
    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return list(dict.fromkeys(tag.split("/", 1)[0] for tag in sorted(ea.Tags()["scalars"])))


def test_tensorboard_opens_on_accuracy_and_loss_then_lr_and_decay_and_diagnostics_after(tmp_path):
    rec = Recorder(tmp_path)
    log_step = {"train_loss": 2.3, "lr": 1e-3, "decay": 1e-6, "grad_norm": 1.0, "l2_penalty": 0.1}
    norms = {"weight_norm": 30.0, "weight_norm/stages.0": 9.0}
    rec.write({"step": 1, "epoch": 0.5, **log_step, **norms})
    rec.write({"step": 2, "epoch": 1.0, "epoch_train_s": 3.0, "epoch_images": 64, "train_acc": 0.2})
    val = {"val_loss": 2.0, "val_acc": 0.3, "val_loss_running": 2.1, "val_acc_running": 0.25}
    val |= {"val_loss_recal": 2.0, "val_acc_recal": 0.3}
    val |= {"train_eval_loss": 1.9, "train_eval_acc": 0.31}
    bn = {"bn_staleness_mu_mean": 0.5, "bn_lag_mu/stages.0": 0.1}
    rec.write({"step": 2, "epoch": 1.0, **val, **bn})
    rec.finish({"status": "completed"})
    groups = scalar_groups(tmp_path)
    assert groups[:3] == ["acc", "loss", "optim"] and groups.index("running_stats") > 2
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    headline = {"acc/train", "acc/val", "loss/train", "loss/val", "optim/lr", "optim/decay"}
    assert headline <= set(tags)
    assert {"running_stats/staleness_mu_mean", "running_stats/lag_mu/stages.0"} <= set(tags)
    assert ea.Scalars("acc/val")[0].value == pytest.approx(0.3)  # val_acc: the headline
    assert ea.Scalars("acc/train")[0].value == pytest.approx(0.2)  # train_acc of the epoch


def test_a_custom_scalars_page_draws_training_and_validation_in_one_chart(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    Recorder(tmp_path).start(STUDY, CHOICES)
    ea = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    ea.Reload()
    (event,) = ea.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    first = layout.category[0]
    charts = {c.title: list(c.multiline.tag) for c in first.chart}
    overlays = ["loss: training and validation", "accuracy: training and validation"]
    assert list(charts)[:2] == overlays
    assert charts["loss: training and validation"] == ["^loss/train$", "^loss/val$"]
    assert charts["accuracy: training and validation"] == ["^acc/train$", "^acc/val$"]


def test_a_continued_run_keeps_its_records_up_to_the_checkpoint_never_through_a_planted_link(
    tmp_path,
):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "train_loss": 1.0} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "metrics.jsonl.tmp").symlink_to(victim)
    Recorder(run, resume_step=2, tensorboard=False).close()
    assert victim.read_text() == "the user's own file\n"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]


def test_lines_that_are_not_utf8_json_are_skipped_not_fatal(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\x00garbage\n{"step": 2}\n')
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1}, {"step": 2}]
