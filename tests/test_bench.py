"""scripts/bench.py runs end to end (--quick, CPU) where hydra/omegaconf are missing and the package
is not installed, times the loop that ships, and writes the figures it promises. No timing
thresholds: timings belong to the benchmark."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"

# Imported by `site` at start-up in the subprocess and in any process it starts (DataLoader
# workers): hydra and omegaconf cannot be imported, and the editable install's finder is gone, so
# `runner` is found only through the script's own sys.path entry (ROOT/src), as on a bare machine.
SITECUSTOMIZE = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    class _Blocked(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("hydra", "omegaconf"):
                raise ImportError(f"{name} is blocked for this test (a bare machine without hydra)")
            return None

    sys.meta_path[:] = [f for f in sys.meta_path
                        if "editable" not in (getattr(f, "__module__", "") or "")
                        and "editable" not in type(f).__module__]
    sys.meta_path.insert(0, _Blocked())
""")


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bare_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _python(code, env, cwd):
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_bare_environment_really_lacks_hydra_and_the_package(bare_env, tmp_path):
    for module in ("omegaconf", "hydra", "runner"):
        r = _python(f"import {module}", bare_env, tmp_path)
        assert r.returncode != 0, f"{module} is still importable in the simulated bare environment"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick CPU bench in a bare environment, eager and (uncaptured) graphs paths; its JSON and
    stdout."""
    tmp = tmp_path_factory.mktemp("bench")
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    out = tmp / "tmp" / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--paths",
            "eager,graphs",
            "--pack",
            "2",
            "--out",
            str(out),
        ],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text()), r.stdout


def test_quick_bench_runs_without_hydra_and_says_what_it_ran_on(quick):
    res, stdout = quick
    env = res["env"]
    assert env["device"] == "cpu" and env["torch"] and env["torchvision"] and env["python"]
    assert env["cpu_count"] >= 1 and "cuda" in env and "cudnn" in env
    assert env["hydra_loaded"] is False
    assert Path(env["runner_path"]) == ROOT / "src" / "runner"
    assert set(env["code"]) == {"commit", "dirty"}  # runner.engine.provenance's block
    assert "ratio" in stdout and "img/s" in stdout


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


def test_evaluation_times_the_trainers_validation_and_recalibration(quick):
    res, _ = quick
    ev = {e["path"]: e for e in res["evaluation"]}["eager"]
    # runner.engine.loop.VAL_BATCH["cpu"]
    assert ev["images"] == res["settings"]["n_val"] and ev["batch_size"] == 100
    assert ev["validation"]["seconds"] > 0 and ev["validation"]["first_s"] > 0
    assert ev["validation"]["est_10000_images_s"] == pytest.approx(
        10_000 * ev["validation"]["seconds"] / ev["images"]
    )
    # bn_recalibrate 2048 > the 256 images
    assert ev["recalibration"]["images"] == res["settings"]["n_train"]
    assert ev["recalibration"]["seconds"] > 0


def test_end_to_end_reads_the_trainers_summary_and_epoch_records(quick):
    res, _ = quick
    rows = res["end_to_end"]
    assert [r["path"] for r in rows] == ["eager"]  # graphs cannot train end to end off CUDA
    r = rows[0]
    assert r["status"] == "completed" and r["images_per_s"] > 0
    assert len(r["epochs"]) == res["settings"]["e2e_epochs"]
    assert r["epochs"][0]["epoch_images"] == 256 and r["epochs"][0]["epoch_train_s"] > 0
    assert (
        r["stall_s"] >= 0
        and r["startup_s"] >= 0
        and set(r["startup"]) >= {"compile_s", "capture_s", "warmup_s"}
    )


def test_op_counts_compare_the_runner_step_with_the_tutorial_step(quick):
    res, _ = quick
    c = res["op_counts"]
    # a ResNet step is hundreds of kernels
    assert c["runner_per_step"] > 100 and c["tutorial_per_step"] > 100
    # CUDA's settings
    assert c["execution"]["precision"] == "bf16" and c["execution"]["channels_last"] is True
    assert c["optimizer"] == "fused Adam"
    assert any(k.startswith("aten::index") for k in c["runner_only"])  # DeviceLoader's gathers
    assert any(k.startswith("aten::_local_scalar_dense") for k in c["tutorial_only"])  # loss.item()
    assert c["log_step_extra"] > 0  # the flush: weight norms and one transfer
    total = sum(c["runner"].values()) - sum(c["tutorial"].values())
    assert total == pytest.approx(sum(c["runner_only"].values()) - sum(c["tutorial_only"].values()))


def test_summary_holds_the_flat_figures(quick):
    res, _ = quick
    s = res["summary"]
    for path in ("eager", "graphs"):
        rate = s["loop_images_per_s"][path]["16"]
        assert s["ratio"][path]["16"] == pytest.approx(rate / s["tutorial_images_per_s"]["16"])
    assert s["fastest"]["16"]["images_per_s"] == max(
        v["16"] for v in s["loop_images_per_s"].values()
    )
    assert s["validation_10000_images_s"]["eager"] > 0 and s["recalibration_s"]["eager"] > 0
    assert s["end_to_end_images_per_s"]["eager"]["16"] > 0
    assert s["ops_per_step"]["runner"] == res["op_counts"]["runner_per_step"]


def test_pack_times_k_jobs_together_against_the_same_jobs_in_sequence(quick):
    res, _ = quick
    p = res["pack"]
    assert (p["k"], p["model"], p["batch_size"]) == (2, "resnet20v1", 16)
    assert p["ratio"] == pytest.approx(p["pack_images_per_s"] / p["sequential_images_per_s"])
    assert p["pack_images_per_s"] > 0 and p["sequential_images_per_s"] > 0


def test_cuda_launches_are_counted_under_the_op_that_made_them():
    """On CUDA the profiler shows the host's launches (cudaLaunchKernel, cudaMemcpyAsync) as
    children of the aten op that issued them; allocation and view ops issue none."""
    bench = load_script("bench")

    def ev(name, parent=None):
        e = SimpleNamespace(name=name, cpu_parent=parent, cpu_children=[])
        if parent is not None:
            parent.cpu_children.append(e)
        return e

    conv = ev("aten::conv2d")
    cast = ev("aten::copy_", ev("aten::_to_copy", ev("aten::to", conv)))
    launches = [
        ev("cudaLaunchKernel", cast),
        ev("cudaLaunchKernel", ev("aten::cudnn_convolution", conv)),
        ev("cudaLaunchKernel", ev("aten::cudnn_convolution", conv)),
    ]
    item = ev("aten::item")
    copy = ev("cudaMemcpyAsync", ev("aten::_local_scalar_dense", item))
    empty = ev("aten::empty")
    events = [conv, cast, *launches, item, copy, empty] + [e.cpu_parent for e in launches]
    counted = bench.device_work(events, cuda=True)
    assert counted == {
        "aten::copy_ < aten::conv2d": 1,
        "aten::cudnn_convolution < aten::conv2d": 2,
        "aten::_local_scalar_dense < aten::item": 1,
    }

    cpu = bench.device_work([conv, item, empty], cuda=False)  # CPU: the innermost ops that compute
    assert cpu == {
        "aten::copy_ < aten::conv2d": 1,
        "aten::cudnn_convolution < aten::conv2d": 2,
        "aten::_local_scalar_dense < aten::item": 1,
    }


def test_unknown_paths_are_refused_with_the_choices(capsys):
    bench = load_script("bench")
    args = bench.parse_args(["--paths", "eager,fast"])
    with pytest.raises(
        SystemExit, match="each must be one of eager, graphs, compile, compile\\+graphs"
    ):
        bench.settings(args, bench.torch.device("cpu"))
