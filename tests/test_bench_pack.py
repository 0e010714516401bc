"""scripts/bench_pack.py times K jobs trained as one pack against the same jobs in sequence
(--quick, CPU, without hydra or the installed package). No timing thresholds."""

import pytest
from bench_runs import assert_ran_bare, run_bare


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return run_bare("bench_pack", tmp_path_factory.mktemp("bench_pack"))


def test_pack_times_k_jobs_together_against_the_same_jobs_in_sequence(quick):
    res, stdout = quick
    assert_ran_bare(res)
    p = res["pack"]
    assert (p["k"], p["model"], p["batch_size"]) == (2, "resnet20v1", 16)
    assert p["ratio"] == pytest.approx(p["pack_images_per_s"] / p["sequential_images_per_s"])
    assert p["pack_images_per_s"] > 0 and p["sequential_images_per_s"] > 0
    assert len(p["alone_images_per_s"]) == len(p["jobs"]) == 2 and "K=2" in stdout
    assert res["summary"]["pack"]["ratio"] == p["ratio"]
