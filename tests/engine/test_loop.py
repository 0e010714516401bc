"""The training loop (runner.engine.loop): what each step records, one batch shape per phase, the
epoch's records."""

import pytest
from conftest import TINY

from runner.engine.records import read_metrics


def test_one_batch_shape_per_phase_full_training_batches_and_padded_validation(
    tmp_path, monkeypatch
):
    """data.drop_last: 500 images at batch 64 give 7 full steps an epoch (the 52 left over differ
    every epoch); validation pads its last batch, so a compiled or captured forward sees one shape
    per phase."""
    import torch
    from conftest import compose_cfg

    import runner.engine.train as train_mod
    from runner.config import validate

    shapes = {True: set(), False: set()}
    real_setup = train_mod.setup

    def watched(*a, **k):
        run = real_setup(*a, **k)
        model = run.trainee.model

        def seen(m, args):
            if m is model:  # not the CPU estimate's timed copy, which carries the hook
                shapes[m.training].add(tuple(args[0].shape))

        model.register_forward_pre_hook(seen)
        return run

    monkeypatch.setattr(train_mod, "setup", watched)
    cfg = validate(
        compose_cfg(*TINY, "data.n_train=500", "data.n_val=250", "trainer.bn_recalibrate=0")
    )
    s = train_mod.train(cfg, tmp_path)
    assert s["steps"] == 14 and s["epochs"] == 2.0
    assert shapes[True] == {(64, 3, 32, 32)}  # training: every step a full batch
    # validation on CPU: batches of 100, the third one padded
    assert shapes[False] == {(100, 3, 32, 32)}
    val = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in r]
    assert len(val) == 2 and all(0 <= r["val_acc"] <= 1 for r in val)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 14


def test_each_epoch_records_its_training_accuracy_as_keras_prints_it(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.records import read_metrics
    from runner.engine.train import train

    cfg = validate(
        compose_cfg(*TINY, "data.n_train=128", "data.n_val=40", "batch_size=32", "epochs=2")
    )
    s = train(cfg, tmp_path)
    epochs = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "epoch_train_s" in r]
    assert [r["step"] for r in epochs] == [4, 8] and all(0 <= r["train_acc"] <= 1 for r in epochs)
    # k of 128
    assert all((r["train_acc"] * 128) == pytest.approx(round(r["train_acc"] * 128)) for r in epochs)
    assert s["final_train_acc"] == epochs[-1]["train_acc"]
