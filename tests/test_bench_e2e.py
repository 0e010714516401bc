"""scripts/bench_e2e.py trains whole runs and reads what the trainer recorded (--quick, CPU,
without hydra or the installed package). No timing thresholds."""

import pytest
from bench_runs import assert_ran_bare, run_bare


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_bare("bench_e2e", tmp_path_factory.mktemp("bench_e2e"), "--paths", "eager,graphs")


def test_end_to_end_reads_the_trainers_summary_and_epoch_records(quick):
    res, _ = quick
    assert_ran_bare(res)
    rows = res["end_to_end"]
    assert [r["path"] for r in rows] == ["eager"]  # graphs cannot train end to end off CUDA
    r = rows[0]
    assert r["status"] == "completed" and r["images_per_s"] > 0
    assert len(r["epochs"]) == res["settings"]["epochs"]
    assert r["epochs"][0]["epoch_images"] == 256 and r["epochs"][0]["epoch_train_s"] > 0
    assert (
        r["stall_s"] >= 0
        and r["startup_s"] >= 0
        and set(r["startup"]) >= {"compile_s", "capture_s", "warmup_s"}
    )


def test_summary_holds_the_flat_figures(quick):
    res, _ = quick
    e2e = res["summary"]["end_to_end_images_per_s"]
    assert e2e["eager"]["16"] > 0 and e2e["eager"]["16"] == res["end_to_end"][0]["images_per_s"]
