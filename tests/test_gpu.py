"""The CUDA paths train exactly like the eager loop: scripts/gpu_check.py's checks as tests.

Tests marked `gpu` need a CUDA device and are skipped elsewhere; on a GPU machine (which has no hydra, which
tests/conftest.py needs) run them with

    PYTHONPATH=src python -m pytest --noconftest -m gpu tests/test_gpu.py

The unmarked tests below run everywhere: the same checks uncaptured on CPU (their plumbing, so that an unattended
GPU session does not stop on a typo), the copy of the optimizer presets, and scripts/gpu_all.sh end to end in its
CPU mode. Nothing here imports hydra or tests/conftest.py.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check
_spec.loader.exec_module(gpu_check)

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("reg", sorted(gpu_check.REGULARIZATION))
@pytest.mark.parametrize("preset", sorted(gpu_check.PRESETS))
@pytest.mark.gpu
@needs_cuda
def test_the_captured_step_equals_the_eager_step_bit_for_bit(preset, reg):
    r = gpu_check.step_equivalence(CUDA, preset, reg)
    assert r["graphs"] == 2 and r["counter"] == r["steps"]  # both batch shapes were recorded and replayed
    assert r["ok"], r


@pytest.mark.gpu
@needs_cuda
def test_validations_that_recalibrate_batchnorm_leave_captured_training_bit_identical(tmp_path):
    r = gpu_check.recalibration_identity(CUDA, tmp_path)
    assert r["execution"]["cuda_graphs"] is True
    assert r["ok"], r


@pytest.mark.gpu
@needs_cuda
def test_the_captured_validation_forward_gives_the_eager_logits_exactly():
    r = gpu_check.eval_forward_equality(CUDA)
    assert r["captured"]
    assert r["ok"], r


@pytest.mark.gpu
@needs_cuda
def test_the_default_path_compiles_and_captures_once_and_never_stalls_after_the_first_epoch(tmp_path):
    r = gpu_check.default_path(CUDA, tmp_path)
    assert r["execution"]["compile"] is True and r["execution"]["cuda_graphs"] is True
    assert r["ok"], r


# ---------------------------------------------------------------- everywhere: the plumbing

CPU = torch.device("cpu")


@pytest.mark.parametrize("preset,reg", [("adamw", "both"), ("sgd_l2", "l2")])
def test_step_equivalence_check_runs_uncaptured_on_cpu(preset, reg):
    r = gpu_check.step_equivalence(CPU, preset, reg, quick=True)
    assert r["ok"], r
    assert r["graphs"] == 0 and r["trained"]


def test_step_equivalence_check_sees_a_different_update():
    """The check can fail: the graphed side built with another lr table is caught at its first step."""
    original = gpu_check.step_tables
    try:
        gpu_check.step_tables = lambda *a: tuple([v * 1.5 for v in t] for t in original(*a))
        r = gpu_check.step_equivalence(CPU, "adamw", "decoupled", quick=True)
    finally:
        gpu_check.step_tables = original
    assert not r["ok"] and r["steps_that_differ"][0] == 0 and r["weights_that_differ"]


def test_recalibration_and_eval_forward_checks_run_on_cpu(tmp_path):
    assert gpu_check.recalibration_identity(CPU, tmp_path)["ok"]
    assert gpu_check.eval_forward_equality(CPU)["ok"]


def test_a_check_that_raises_is_a_failed_check_and_the_others_still_run(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("planted")

    monkeypatch.setattr(gpu_check, "eval_forward_equality", boom)
    monkeypatch.setattr(gpu_check, "PRESETS", {"adamw": gpu_check.PRESETS["adamw"]})
    monkeypatch.setattr(gpu_check, "REGULARIZATION", {"both": gpu_check.REGULARIZATION["both"]})
    monkeypatch.setattr(gpu_check, "recalibration_identity", lambda *a: {"check": "recalibration", "ok": True})
    monkeypatch.setattr(gpu_check, "default_path", lambda *a: {"check": "default path", "ok": True})
    results = gpu_check.all_checks(CPU, tmp_path, quick=True)
    assert [r["ok"] for r in results] == [True, True, False, True]
    assert "planted" in results[2]["error"]


def test_the_preset_copy_matches_configs_optimizer():
    yaml = pytest.importorskip("yaml")
    for name, copied in gpu_check.PRESETS.items():
        section = yaml.safe_load((ROOT / "configs" / "optimizer" / f"{name}.yaml").read_text())["optimizer"]
        for key, value in copied.items():
            assert section[key] == (list(value) if isinstance(value, tuple) else value), (name, key)


@pytest.mark.slow
def test_gpu_all_runs_every_stage_and_prints_the_speed_table_in_its_cpu_mode(tmp_path):
    """DEVICE=cpu QUICK=1 scripts/gpu_all.sh: the unattended GPU command's plumbing, tiny, on CPU."""
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "QUICK": "1",
        "OUT": str(tmp_path / "out"),
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
    }
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_all.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out = tmp_path / "out"
    assert json.loads((out / "bench.json").read_text())["summary"]["loop_images_per_s"]["eager"]
    assert json.loads((out / "gpu_check.json").read_text())["failed"] == []
    table = (out / "speed_table.md").read_text()
    assert "| tutorial DataLoader loop" in table and "| runner, eager" in table
    assert (out / "gpu_all.log").read_text().count("stage ") >= 4
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back from $OUT


def test_the_speed_table_puts_each_figure_in_its_cell_and_marks_what_is_missing():
    spec = importlib.util.spec_from_file_location("speed_table", ROOT / "scripts" / "speed_table.py")
    speed_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed_table)

    def loop_row(batch, path, rate, tutorial):
        return {
            "batch_size": batch,
            "path": path,
            "loop": {"images_per_s": rate},
            "tutorial": {"images_per_s": tutorial},
            "ratio": rate / tutorial,
            "epoch_s_est": 50_000 / rate,
            "overhead": {"share_raw": 0.01},
        }

    bench = {
        "env": {
            "device_name": "NVIDIA H100",
            "torch": "2.11.0",
            "cuda": "13.0",
            "cudnn": 91900,
            "python": "3.12.3",
            "cpu_count": 16,
            "code": {"commit": "abcdef1234", "dirty": False},
        },
        "settings": {"model": "resnet56v2", "data": "synthetic"},
        "loop": [
            loop_row(64, "eager", 2400, 2200),
            loop_row(128, "eager", 4000, 4200),
            loop_row(128, "graphs", 16800, 4200),
        ],
    }
    check = {
        "runs": [
            {
                "batch_size": 128,
                "path": "default",
                "images_per_s": 25_000,
                "epoch_train_s": [30.5, 1.9],
                "startup_s": 28.0,
                "stall_s": 0.05,
                "val_s": 0.21,
                "val_first_s": 19.0,
            },
            {"batch_size": 64, "path": "default", "error": "Traceback ..."},
        ],
        "failed": ["run default batch 64"],
    }
    lines = speed_table.table(bench, check).splitlines()
    assert lines[0].startswith("Measured on NVIDIA H100, torch 2.11.0, CUDA 13.0") and "commit abcdef1" in lines[0]
    rows = {ln.split(" | ")[0].lstrip("| "): ln.split(" | ")[1:] for ln in lines if ln.startswith("| ")}
    assert rows["what"] == ["batch 64", "batch 128 |"]
    assert rows["tutorial DataLoader loop (reference)"] == ["2,200 img/s", "4,200 img/s |"]
    graphs = next(v for k, v in rows.items() if k.startswith("runner, CUDA graphs"))
    assert graphs[0] == "–" and graphs[1].startswith("16,800 img/s (4.00×), 2.98 s/epoch")
    default = next(v for k, v in rows.items() if k.startswith("`runner.engine.loop.train`, default"))
    assert default[0] == "failed" and default[1].startswith("25,000 img/s steady; epochs 30.50, 1.90 s; startup 28.0")
    assert lines[-1] == "gpu_check failures: run default batch 64"
