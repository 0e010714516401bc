"""scripts/tutorial_loop.py, the loop the CLI is compared with: what it trains and reports. No
timing thresholds: timings belong to the benchmarks."""

import json
from pathlib import Path

import pytest

from scripts import tutorial_loop

ROOT = Path(__file__).resolve().parents[1]


def test_the_tutorial_loop_trains_the_runners_model_on_full_batches(capsys):
    from runner.core.models import build_resnet

    tutorial_loop.main(
        ["--model", "resnet20v1", "--batch-size", "16", "--n-train", "40", "--workers", "0"]
    )
    out = json.loads(capsys.readouterr().out)
    n_params = sum(p.numel() for p in build_resnet(20, 1).parameters())
    assert out["n_params"] == n_params and out["steps"] == 2  # 40 images: 2 full batches of 16
    assert out["images_per_s"] > 0 and out["images_per_s_overall"] > 0
    assert "DataLoader" in out["loop"] and out["workers"] == 0


def test_the_tutorial_loop_refuses_too_few_images_for_a_rate():
    with pytest.raises(SystemExit):
        tutorial_loop.main(["--batch-size", "16", "--n-train", "20"])
