"""scripts/bench.py, the loop-overhead benchmark, runs end to end (--quick, CPU) where
hydra/omegaconf are missing and the package is not installed, times the loop that ships against
the tutorial loop and the bare step, and writes the figures it promises. No timing thresholds:
timings belong to the benchmark."""

import subprocess
import sys

import pytest
from bench_runs import assert_ran_bare, bare_env, run_bare


def _python(code, env, cwd):
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_bare_environment_really_lacks_hydra_and_the_package(tmp_path):
    env = bare_env(tmp_path)
    for module in ("omegaconf", "hydra", "runner"):
        r = _python(f"import {module}", env, tmp_path)
        assert r.returncode != 0, f"{module} is still importable in the simulated bare environment"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick CPU bench in a bare environment, eager and (uncaptured) graphs paths; its JSON and
    stdout."""
    return run_bare("bench", tmp_path_factory.mktemp("bench"), "--paths", "eager,graphs")


def test_quick_bench_runs_without_hydra_and_says_what_it_ran_on(quick):
    res, stdout = quick
    assert_ran_bare(res)
    assert "ratio" in stdout and "img/s" in stdout
    # the loop core alone: the other measurements have scripts of their own
    assert set(res) == {"env", "settings", "input_pipeline", "loop", "summary"}


def test_the_timed_loop_is_the_trainers_loop_with_its_bookkeeping(quick):
    res, _ = quick
    rows = {r["path"]: r for r in res["loop"]}
    assert set(rows) == {"eager", "graphs"}
    for row in rows.values():
        loop, ref = row["loop"]["images_per_s"], row["tutorial"]["images_per_s"]
        assert loop > 0 and ref > 0 and row["bare"]["images_per_s"] > 0
        assert row["ratio"] == pytest.approx(loop / ref)
        assert row["epoch_s_est"] == pytest.approx(50_000 / loop)
        assert 0.0 <= row["overhead"]["share"] <= 1.0
        # runner.engine.loop.loop wrote a metrics.jsonl record for every step it took, and flushed
        # with the weight norms
        assert row["records"]["train"] == row["records"]["steps"] > 0
        assert row["records"]["with_stage_norms"] >= 1
    assert rows["eager"]["execution"]["cuda_graphs"] is False
    # off CUDA the graphs path runs its device-side step uncaptured: the path works, no graph is
    # recorded
    assert (
        rows["graphs"]["execution"]["cuda_graphs"] == "uncaptured"
        and rows["graphs"]["startup"]["graphs"] == 0
    )

    pipe = res["input_pipeline"][0]
    assert pipe["runner"]["images_per_s"] > 0 and pipe["reference"]["images_per_s"] > 0
    assert pipe["ratio"] == pytest.approx(
        pipe["runner"]["images_per_s"] / pipe["reference"]["images_per_s"]
    )


def test_summary_holds_the_flat_figures(quick):
    res, _ = quick
    s = res["summary"]
    for path in ("eager", "graphs"):
        rate = s["loop_images_per_s"][path]["16"]
        assert s["ratio"][path]["16"] == pytest.approx(rate / s["tutorial_images_per_s"]["16"])
    assert s["fastest"]["16"]["images_per_s"] == max(
        v["16"] for v in s["loop_images_per_s"].values()
    )
    assert s["input_pipeline_ratio"]["16"] == res["input_pipeline"][0]["ratio"]
    assert (s["device"], s["model"]) == ("cpu", "resnet20v1")


def test_unknown_paths_are_refused_with_the_choices(tmp_path):
    from scripts import bench

    out = tmp_path / "bench.json"
    with pytest.raises(
        SystemExit, match="each must be one of eager, graphs, compile, compile\\+graphs"
    ):
        bench.main(["--device", "cpu", "--paths", "eager,fast", "--out", str(out)])
    assert not out.exists()
