"""A validation (runner.engine.validation): evaluate, record, best.pt; recalibration leaves training
as it was."""

import torch
from conftest import TINY, compose_cfg

from runner.config import validate
from runner.core.models import build_resnet
from runner.engine.records import read_metrics


def run(tmp_path, *overrides):
    from runner.engine.train import train

    cfg = validate(
        compose_cfg(
            *TINY,
            "data.n_train=256",
            "data.n_val=100",
            "batch_size=32",
            "epochs=2",
            "trainer.val_every=3",
            *overrides,
        )
    )
    return train(cfg, tmp_path), read_metrics(tmp_path / "metrics.jsonl")


def test_recalibration_leaves_training_bit_for_bit_as_it_was(tmp_path):
    off, off_records = run(tmp_path / "off", "trainer.bn_recalibrate=0")
    on, on_records = run(tmp_path / "on", "trainer.bn_recalibrate=64", "trainer.train_eval=true")
    train_records = lambda rs: [r for r in rs if "train_loss" in r]  # noqa: E731
    # losses, lr, decay, norms: every value
    assert train_records(on_records) == train_records(off_records)
    a = torch.load(tmp_path / "off" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "on" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    val = [r for r in on_records if "val_loss" in r]
    assert len(val) == 6 and all(
        {"val_acc_recal", "train_eval_acc", "train_eval_acc_recal"} <= r.keys() for r in val
    )
    assert [r["val_acc_running"] for r in val] == [
        r["val_acc_running"] for r in off_records if "val_loss" in r
    ]
    # the bare name is the headline: recalibrated
    assert all(r["val_acc"] == r["val_acc_recal"] for r in val)
    # or running
    assert all(r["val_acc"] == r["val_acc_running"] for r in off_records if "val_loss" in r)
    assert on["val_metric"] == "recalibrated" and off["val_metric"] == "running"
    assert on["best_val_acc"] == max(r["val_acc_recal"] for r in val)
    assert (
        on["best_val_acc_running"] == off["best_val_acc"] == max(r["val_acc_running"] for r in val)
    )


def test_with_lagging_running_statistics_the_recalibrated_accuracy_reflects_the_weights(tmp_path):
    """Keras' momentum (0.01) and 96 steps: the running statistics have moved 62 % of the way from
    their start, so the running evaluation sits near chance (0.10 here) while the recalibrated one
    (0.375) is close to what the weights do with their own batch statistics (train mode on the
    validation images)."""
    s, records = run(
        tmp_path,
        "model.bn_momentum=0.01",
        "trainer.bn_recalibrate=256",
        "lr=2e-3",
        "data.n_train=512",
        "batch_size=16",
        "epochs=3",
        "trainer.val_every=1000",
    )
    best = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    model = build_resnet(20, 1, 10, bn_momentum=0.01)
    model.load_state_dict(best)
    from runner.core.loader import channel_stats
    from runner.data.synthetic import make_synthetic

    splits = make_synthetic(512, 100, seed=0)
    mean, std = channel_stats(splits.train_x)
    x = (splits.val_x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        # batch statistics
        weights_acc = (model.train()(x).argmax(1) == splits.val_y).float().mean().item()
    last = [r for r in records if "val_loss" in r][-1]
    assert last["val_acc_recal"] > last["val_acc_running"] + 0.15
    assert abs(last["val_acc_recal"] - weights_acc) < 0.1
    assert abs(last["val_acc_running"] - weights_acc) > 2 * abs(last["val_acc_recal"] - weights_acc)
    assert (
        s["final_val_acc"] == last["val_acc_recal"]
        and s["final_val_acc_running"] == last["val_acc_running"]
    )
    # one name, one value
    assert s["final_val_acc"] == last["val_acc"] and s["final_val_loss"] == last["val_loss"]


def test_best_pt_holds_the_weights_and_statistics_of_the_best_validation(tmp_path):
    s, records = run(tmp_path, "trainer.bn_recalibrate=64")
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    val = [r for r in records if "val_loss" in r]
    top = max(val, key=lambda r: r["val_acc_recal"])
    assert (
        best["step"] == top["step"] and best["val_acc"] == top["val_acc_recal"] == s["best_val_acc"]
    )
    assert best["val_metric"] == "recalibrated"
    assert (
        len(best["classes"]) == 10
        and best["normalize"] == "channel"
        and best["image_size"] == [3, 32, 32]
    )
    # what inference needs
    assert len(best["mean"]) == len(best["std"]) == 3 and all(0 < s < 1 for s in best["std"])
    model = build_resnet(20, 1, 10, bn_momentum=0.1)
    model.load_state_dict(best["model"])  # loads as it is, statistics included
