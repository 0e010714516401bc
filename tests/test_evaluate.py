"""`python -m runner.evaluate` (runner.evaluate): a checkpoint on its run's test split or on an
image folder gives what the run itself recorded for the same images; per-image predictions; clear
refusals of damaged and foreign files."""

import argparse
import csv

import pytest
import torch
from conftest import TINY, compose_cfg

from runner import evaluate as E
from runner.config import validate
from runner.data import load_splits

LEARNS = [*TINY, "epochs=4", "batch_size=32", "lr=3e-3", "trainer.val_every=16"]


def trained(tmp_path_factory, name, *overrides):
    from runner.engine.train import train

    run_dir = tmp_path_factory.mktemp(name) / "run"
    summary = train(validate(compose_cfg(*LEARNS, *overrides)), run_dir)
    assert summary["status"] == "completed"
    return run_dir, summary


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A run that held 100 training images out for validation: its test split stayed apart."""
    return trained(tmp_path_factory, "held_out", "data.val_split=100")


@pytest.fixture(scope="module")
def on_test(tmp_path_factory):
    """A run validated on the whole test split with running statistics (no recalibration)."""
    return trained(tmp_path_factory, "on_test", "trainer.bn_recalibrate=0")


@pytest.mark.slow
def test_best_pt_on_the_test_split_gives_the_runs_test_acc_selected(held_out, capsys):
    run_dir, summary = held_out
    assert summary["test_acc_selected"] > 0.2  # it learned: chance is 0.1
    r = E.evaluate_checkpoint(str(run_dir), [])
    assert r["path"] == run_dir / "checkpoints" / "best.pt" and r["images"] == 200
    assert r["acc"] == summary["test_acc_selected"]
    assert r["loss"] == pytest.approx(summary["test_loss_selected"], rel=1e-6)
    assert r["recorded"] == ("test_acc_selected", summary["test_acc_selected"])
    assert E.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"on the test split of data=synthetic (200 images): accuracy {r['acc']:.4f}" in out
    assert f"its run recorded test_acc_selected {r['acc']:.4f} for these images" in out


@pytest.mark.slow
def test_validated_on_the_test_split_best_pt_gives_best_val_acc_and_last_pt_the_final(on_test):
    run_dir, summary = on_test
    best = E.evaluate_checkpoint(str(run_dir), [])
    assert best["acc"] == summary["best_val_acc"] and best["acc"] > 0.2
    assert best["recorded"] == ("best_val_acc", summary["best_val_acc"])
    # a step checkpoint: no inference settings of its own, computed again from the training images
    assert "classes" not in torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    last = E.evaluate_checkpoint(str(run_dir / "checkpoints" / "last.pt"), [])
    assert last["acc"] == summary["final_val_acc"] and last["step"] == summary["steps"]
    assert last["loss"] == pytest.approx(summary["final_val_loss"], rel=1e-6)


def export_test_split(root, seed=0):
    """The synthetic test split as PNG files, root/test/<class>/<i>.png (lossless)."""
    from PIL import Image

    splits = load_splits(validate(compose_cfg(*LEARNS)).data, seed)
    for i, (x, y) in enumerate(zip(splits.val_x, splits.val_y.tolist())):
        folder = root / "test" / splits.classes[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return root


@pytest.mark.slow
def test_an_image_folder_of_the_same_images_gives_the_same_accuracy_and_each_prediction(
    held_out, tmp_path
):
    run_dir, summary = held_out
    folder = export_test_split(tmp_path / "images")  # test/ alone: no training images needed
    out = tmp_path / "predictions.csv"
    r = E.evaluate_checkpoint(
        str(run_dir), ["data=image_folder", f"data.root={folder}"], "cpu", out
    )
    assert r["acc"] == summary["test_acc_selected"] and r["where"] == str(folder / "test")
    assert r["recorded"] is None  # other images, as far as the command knows
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 200 and list(rows[0]) == [
        *("index", "file", "label", "prediction", "confidence", "correct")
    ]
    assert sum(int(row["correct"]) for row in rows) / 200 == pytest.approx(r["acc"])
    assert all(row["file"].endswith(".png") and row["label"] in row["file"] for row in rows)
    assert all(0.1 <= float(row["confidence"]) <= 1 for row in rows)  # the top of 10 classes
    part = E.evaluate_checkpoint(str(run_dir), ["data.val_subset=50"])
    assert part["images"] == 50 and part["recorded"] is None


@pytest.mark.slow
def test_images_of_a_class_the_checkpoint_does_not_know_are_refused(held_out, tmp_path):
    from PIL import Image

    run_dir, _ = held_out
    (tmp_path / "test" / "okapi").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "test" / "okapi" / "0.png")
    with pytest.raises(E.ConfigError, match=r"classes \['okapi'\], which the checkpoint does not"):
        E.evaluate_checkpoint(str(run_dir), ["data=image_folder", f"data.root={tmp_path}"])


@pytest.mark.slow
def test_a_damaged_or_foreign_file_is_one_clear_line(held_out, tmp_path, capsys):
    run_dir, _ = held_out
    raw = (run_dir / "checkpoints" / "best.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[: len(raw) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    code = tmp_path / "code.pt"
    torch.save(
        {"model": {}, "config": {"model": {}, "data": {}}, "x": argparse.Namespace(a=1)}, code
    )
    cases = {
        cut: "cannot be read as a checkpoint",
        foreign: "is not a checkpoint of this runner",
        code: "cannot be read as a checkpoint",  # weights_only: no object is built
        tmp_path: "has no checkpoints/best.pt",
        tmp_path / "nothing": "no such run folder or checkpoint file",
    }
    for path, message in cases.items():
        assert E.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("runner.evaluate: error: ") and message in err, err
        assert err.count("\n") == 1  # one line, no traceback


def test_only_data_settings_change_and_they_are_checked():
    saved = validate(compose_cfg(*TINY, "data.val_split=100")).data.__dict__
    d = E.data_config(saved, [])
    assert (d.source, d.val_split, d.subset) == ("synthetic", None, None)  # the test split whole
    d = E.data_config(saved, ["data=image_folder", "data.root=/x", "data.val_subset=10"])
    assert (d.source, d.root, d.val_subset) == ("image_folder", "/x", 10)
    for wrong, message in [
        (["lr=1"], r"^lr=1: only the data can change here"),
        (["data=nope"], r"^data=nope: no such preset; one of cifar10, image_folder, synthetic"),
        (["data.nope=1"], r"^data.nope=1: "),
        (["data=image_folder"], r"^data.root=None is invalid"),
    ]:
        with pytest.raises(E.ConfigError, match=message):
            E.data_config(saved, wrong)
