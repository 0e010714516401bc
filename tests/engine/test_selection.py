"""Honest selection (runner.engine.selection): which images chose best.pt, and the test split's
scores."""

import pytest
from conftest import TINY


def test_with_a_held_out_split_the_test_split_scores_the_selected_and_the_final_weights(tmp_path):
    import torch
    from conftest import compose_cfg

    from runner.config import validate
    from runner.core.models import build_resnet
    from runner.data.synthetic import make_synthetic
    from runner.engine.train import train

    cfg = validate(
        compose_cfg(
            *TINY, "data.n_train=128", "data.n_val=40", "data.val_split=32", "batch_size=32"
        )
    )
    s = train(cfg, tmp_path)
    # the held-out images select
    assert s["selected_on"] == "val_split" and s["data"]["n_val"] == 32
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert s["selected_step"] == best["step"] and best["val_acc"] == s["best_val_acc"]
    test = make_synthetic(128, 40, seed=0)  # its val split is the test split the run kept apart
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (best["mean"], best["std"]))
    model = build_resnet(20, 1, len(best["classes"]), bn_momentum=0.1)
    model.load_state_dict(best["model"])
    with torch.no_grad():  # best.pt on its own, as a user runs it: its normalization, eval mode
        acc = (
            (model.eval()((test.val_x.float() / 255 - mean) / std).argmax(1) == test.val_y)
            .float()
            .mean()
            .item()
        )
    assert s["test_acc_selected"] == pytest.approx(acc, abs=1e-6) and 0 <= s["test_acc_final"] <= 1


def test_without_a_held_out_split_the_summary_says_the_test_split_selected(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.train import train

    s = train(
        validate(compose_cfg(*TINY, "data.n_train=128", "data.n_val=40", "trainer.max_steps=2")),
        tmp_path,
    )
    assert s["selected_on"] == "test" and "test_acc_selected" not in s
