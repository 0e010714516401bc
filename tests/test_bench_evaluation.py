"""scripts/bench_evaluation.py times the trainer's validation and recalibration (--quick, CPU,
without hydra or the installed package). No timing thresholds."""

import pytest
from bench_runs import assert_ran_bare, run_bare


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_evaluation")
    return run_bare("bench_evaluation", folder, "--paths", "eager,graphs")


def test_evaluation_times_the_trainers_validation_and_recalibration(quick):
    res, stdout = quick
    assert_ran_bare(res)
    assert "evaluation eager" in stdout
    rows = {e["path"]: e for e in res["evaluation"]}
    assert set(rows) == {"eager", "graphs"}
    assert rows["graphs"]["execution"]["cuda_graphs"] == "uncaptured"
    ev = rows["eager"]
    # runner.engine.loop.VAL_BATCH["cpu"]
    assert ev["images"] == res["settings"]["n_val"] and ev["batch_size"] == 100
    assert ev["validation"]["seconds"] > 0 and ev["validation"]["first_s"] > 0
    assert ev["validation"]["est_10000_images_s"] == pytest.approx(
        10_000 * ev["validation"]["seconds"] / ev["images"]
    )
    # bn_recalibrate 2048 > the 256 images
    assert ev["recalibration"]["images"] == res["settings"]["n_train"]
    assert ev["recalibration"]["seconds"] > 0


def test_summary_holds_the_flat_figures(quick):
    res, _ = quick
    s = res["summary"]
    assert s["validation_10000_images_s"]["eager"] > 0 and s["recalibration_s"]["eager"] > 0
    assert set(s["validation_10000_images_s"]) == {"eager", "graphs"}
    assert s["recalibration_s"]["eager"] == res["evaluation"][0]["recalibration"]["seconds"]
