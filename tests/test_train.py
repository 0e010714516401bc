"""End to end: `python -m runner` on synthetic data learns and writes the contract files."""

import json
import math
import re

import pytest
from conftest import TINY, forbid_host_reads, run_cli

from runner.engine.records import read_metrics

SUMMARY_KEYS = {
    "status",
    "n_params",
    "steps",
    "epochs",
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "final_train_loss",
    "wall_time_s",
    "images_per_s",
    "device",
    "hparams",
    "regularization",
}


def run_dirs(root):
    return sorted(p.parent for p in root.rglob("summary.json"))


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    r = run_cli([*TINY, "epochs=6", "batch_size=32", "trainer.val_every=32", "lr=3e-3"], cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = run_dirs(cwd / "outputs")
    return run_dir, r


@pytest.mark.slow
def test_a_short_run_learns_well_above_chance(learned_run):
    run_dir, _ = learned_run
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed"
    assert s["best_val_acc"] > 0.4, s  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_the_run_folder_holds_the_contract_files(learned_run):
    run_dir, _ = learned_run
    for name in (".hydra/config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    s = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= s.keys()
    assert s["n_params"] == 273066 and s["steps"] == 96 and s["epochs"] == 6.0 and s["device"] == "cpu"
    assert s["hparams"]["lr"] == 3e-3 and s["hparams"]["model"]["name"] == "resnet20v1"
    assert s["choices"]["optimizer"] == "adamw"
    assert s["regularization"][0].startswith("decoupled decay: θ ← θ·(1 − η_t·0.0005)")


@pytest.mark.slow
def test_metrics_jsonl_has_a_train_record_per_step_and_validations(learned_run):
    run_dir, _ = learned_run
    recs = read_metrics(run_dir / "metrics.jsonl")
    assert all(isinstance(r["step"], int) and isinstance(r["epoch"], float) for r in recs)
    train = [r for r in recs if "train_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 97))
    assert all(r["decay"] == pytest.approx(r["lr"] / 3e-3 * 5e-4) for r in train)  # η_t·λ, the paper's scaling
    assert sorted({r["lr"] for r in train}) == pytest.approx([3e-5, 3e-4, 3e-3])  # drops at 50 % and 75 %
    assert all(math.isfinite(r["weight_norm"]) and r["l2_penalty"] == 0 for r in train if "weight_norm" in r)
    val = [r for r in recs if "val_acc" in r]
    assert [r["step"] for r in val] == [32, 64, 96]


@pytest.mark.slow
def test_a_two_job_sweep_writes_one_folder_per_job(tmp_path):
    r = run_cli(["-m", *TINY, "epochs=1", "trainer.max_steps=3", "lr=1e-3,2e-3"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    dirs = run_dirs(tmp_path / "multirun" / "latest")
    assert [d.name.split("_", 1)[0] for d in dirs] == ["0", "1"]  # job number first, then the swept keys
    assert [d.name for d in dirs] == ["0_lr=0.001", "1_lr=0.002"]  # what varies, not every override
    lrs = sorted(json.loads((d / "summary.json").read_text())["hparams"]["lr"] for d in dirs)
    assert lrs == [1e-3, 2e-3]
    assert all(json.loads((d / "summary.json").read_text())["steps"] == 3 for d in dirs)


@pytest.mark.slow
def test_two_runs_started_together_never_share_a_folder(tmp_path):
    import subprocess
    import sys

    args = [sys.executable, "-m", "runner", *TINY, "trainer.max_steps=1", "data.n_train=64", "data.n_val=20"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    assert len(run_dirs(tmp_path / "outputs")) == 2


def test_a_training_step_never_reads_device_values_on_the_host(monkeypatch):
    """On a GPU any of these reads is a host sync inside the step; the loop reads only at logging points."""
    from contextlib import nullcontext

    import torch

    from runner.core.models import build_resnet
    from runner.core.update_rule import Optimizer, decoupled_rate
    from runner.engine.step import train_step

    model = build_resnet(20, 1)
    opt = Optimizer(model, algorithm="adam", lr=1e-3, l2=1e-4, wd=5e-4, decay=decoupled_rate(5e-4, "schedule", 1e-3))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    forbid_host_reads(monkeypatch, opt)
    loss, d, gn = train_step(model, opt, x, y, 0.0, 1.0, nullcontext(), want_grad_norm=True)
    assert isinstance(loss, torch.Tensor) and isinstance(gn, torch.Tensor) and d == 5e-4


def test_a_decay_too_small_for_float32_is_reported_in_the_summary(tmp_path, caplog):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.loop import train

    # torch's convention: d_t = lr_t·λ = 1e-3·5e-4 = 5e-7 on every step, which float32 weights apply as 4.77e-7
    cfg = validate(
        compose_cfg(
            *TINY,
            "data.n_train=64",
            "data.n_val=20",
            "epochs=10",
            "trainer.max_steps=2",
            "optimizer=adamw",
            "wd=5e-4",
            "optimizer.wd_scaling=lr",
        )
    )
    s = train(cfg, tmp_path)
    (note,) = [r for r in s["regularization"] if r.startswith("float32 rounding")]
    assert "apply 95.4 % of the decoupled decay" in note and "-4.6 %" in note  # 1 − 5e-7 rounds to 1 − 8·2^-24
    assert any(r.levelname == "WARNING" and r.message == note for r in caplog.records)


@pytest.mark.slow
def test_a_plain_non_editable_install_runs_from_any_folder(tmp_path):
    """`pip install .` (no -e) ships the configs inside the package; python -m runner works anywhere."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    pip = [sys.executable, "-m", "pip"]
    r = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(tmp_path / "whl"), str(repo)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("*.whl")
    r = subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli([*TINY, "trainer.max_steps=1"], cwd=elsewhere, env_extra={"PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(next(elsewhere.rglob("summary.json")).read_text())
    assert s["status"] == "completed" and s["steps"] == 1
    probe = subprocess.run(
        [sys.executable, "-c", "import runner.configs; print(runner.configs.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={"PYTHONPATH": str(tmp_path / "site")},
    )
    assert probe.stdout.startswith(str(tmp_path / "site"))


@pytest.mark.slow
def test_compiled_model_trains_and_the_compile_time_is_reported_apart(tmp_path):
    r = run_cli(
        [*TINY, "trainer.compile=true", "trainer.max_steps=3", "data.n_train=128", "batch_size=32"], cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert s["status"] == "completed" and s["steps"] == 3
    steady_step_s = 32 / s["images_per_s"]
    assert s["first_step_s"] > 3 * steady_step_s  # the first step carries torch.compile


def test_one_batch_shape_per_phase_full_training_batches_and_padded_validation(tmp_path, monkeypatch):
    """data.drop_last: 500 images at batch 64 give 7 full steps an epoch (the 52 left over differ every epoch);
    validation pads its last batch, so a compiled or captured forward sees one shape per phase."""
    import torch
    from conftest import compose_cfg

    import runner.engine.loop as train_mod
    from runner.config import validate

    shapes = {True: set(), False: set()}
    real_setup = train_mod.setup

    def watched(*a, **k):
        run = real_setup(*a, **k)
        run.model.register_forward_pre_hook(lambda m, args: shapes[m.training].add(tuple(args[0].shape)))
        return run

    monkeypatch.setattr(train_mod, "setup", watched)
    cfg = validate(compose_cfg(*TINY, "data.n_train=500", "data.n_val=250", "trainer.bn_recalibrate=0"))
    s = train_mod.train(cfg, tmp_path)
    assert s["steps"] == 14 and s["epochs"] == 2.0
    assert shapes[True] == {(64, 3, 32, 32)}  # training: every step a full batch
    assert shapes[False] == {(100, 3, 32, 32)}  # validation on CPU: batches of 100, the third one padded
    val = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in r]
    assert len(val) == 2 and all(0 <= r["val_acc"] <= 1 for r in val)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 14


def test_the_summary_says_which_accuracy_it_reports_and_what_ran(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.loop import train

    s = train(validate(compose_cfg(*TINY, "trainer.max_steps=3", "data.n_train=128", "data.n_val=50")), tmp_path)
    assert s["val_metric"] == "recalibrated" and s["best_val_acc"] == s["best_val_acc_recal"]
    assert {"best_val_acc_running", "final_val_acc_running", "final_val_loss_running"} <= s.keys()
    assert s["path"] == {
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "compile_mode": None,
        "cuda_graphs": False,
        "channels_last": False,
    }
    assert s["data"]["name"] == "synthetic" and s["data"]["n_train"] == 128 and len(s["data"]["fingerprint"]) == 16
    assert {"commit", "dirty"} <= s["code"].keys() and s["env"]["torch"]
    assert {"compile_s", "capture_s", "warmup_s", "first_step_s"} <= s["startup"].keys()


@pytest.mark.slow
def test_with_the_progress_bar_validations_are_still_logged_and_the_last_line_is_readable(tmp_path):
    r = run_cli([*TINY, "trainer.progress=true", "trainer.max_steps=8", "trainer.val_every=4"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr  # Hydra's log lines go to stdout, the bar to stderr
    own = r"val_acc_recal [\d.]+ val_loss_recal [\d.]+ val_acc_running [\d.]+ val_loss_running [\d.]+"
    assert len(re.findall(rf"step [48] epoch [\d.]+ {own} \(val_acc = val_acc_recal\)", out)) == 2
    assert re.search(r"8/8 \[[^\r]*val_acc_recal=\d\.\d{3}[^\r]*\]\n", r.stderr)  # the bar keeps its last accuracy
    assert re.search(r"validation \(200 images\): 100%\|[^\r]*\| 4/4 ", r.stderr)  # 2 batches x 2 evaluations
    last = [line for line in out.splitlines() if "best_val_acc" in line][-1]
    head = r"best_val_acc \d\.\d{4} \(= best_val_acc_recal, selected on test\)"  # no held-out split: test chose it
    assert re.search(rf"completed after 8 steps: {head}, [\d.]+ s$", last), last


@pytest.mark.slow
def test_the_smoke_demo_learns_clearly_above_chance(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.loop import train

    cfg = validate(compose_cfg("debug=smoke"))
    assert cfg.trainer.progress is None  # the bar wherever there is a terminal
    s = train(cfg, tmp_path)
    assert s["status"] == "completed" and s["final_val_acc"] >= 0.3, s["final_val_acc"]  # chance: 0.1


def test_data_val_subset_validates_on_the_same_stratified_images_every_time():
    import torch

    from runner.config import ConfigError, DataConfig
    from runner.engine.build import load_splits

    full = load_splits(DataConfig(n_train=100, n_val=100), seed=0)
    a = load_splits(DataConfig(n_train=100, n_val=100, val_subset=20), seed=0)
    b = load_splits(DataConfig(n_train=100, n_val=100, val_subset=20), seed=0)
    assert len(a.val_y) == 20 and torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, full.train_x)
    assert torch.bincount(a.val_y, minlength=10).tolist() == [2] * 10  # stratified: 2 per class
    with pytest.raises(ConfigError, match=r"^data.val_subset=101 is larger than the 100 validation images"):
        load_splits(DataConfig(n_train=100, n_val=100, val_subset=101), seed=0)


def test_each_epoch_records_its_training_accuracy_as_keras_prints_it(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.loop import train
    from runner.engine.records import read_metrics

    cfg = validate(compose_cfg(*TINY, "data.n_train=128", "data.n_val=40", "batch_size=32", "epochs=2"))
    s = train(cfg, tmp_path)
    epochs = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "epoch_train_s" in r]
    assert [r["step"] for r in epochs] == [4, 8] and all(0 <= r["train_acc"] <= 1 for r in epochs)
    assert all((r["train_acc"] * 128) == pytest.approx(round(r["train_acc"] * 128)) for r in epochs)  # k of 128
    assert s["final_train_acc"] == epochs[-1]["train_acc"]


def test_with_a_held_out_split_the_test_split_scores_the_selected_and_the_final_weights(tmp_path):
    import torch
    from conftest import compose_cfg

    from runner.config import validate
    from runner.core.data import make_synthetic
    from runner.core.models import build_resnet
    from runner.engine.loop import train

    cfg = validate(compose_cfg(*TINY, "data.n_train=128", "data.n_val=40", "data.val_split=32", "batch_size=32"))
    s = train(cfg, tmp_path)
    assert s["selected_on"] == "val_split" and s["data"]["n_val"] == 32  # the held-out images select
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert s["selected_step"] == best["step"] and best["val_acc"] == s["best_val_acc"]
    test = make_synthetic(128, 40, seed=0)  # its val split is the test split the run kept apart
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (best["mean"], best["std"]))
    model = build_resnet(20, 1, len(best["classes"]), bn_momentum=0.1)
    model.load_state_dict(best["model"])
    with torch.no_grad():  # best.pt on its own, as a user runs it: its normalization, eval mode
        acc = (model.eval()((test.val_x.float() / 255 - mean) / std).argmax(1) == test.val_y).float().mean().item()
    assert s["test_acc_selected"] == pytest.approx(acc, abs=1e-6) and 0 <= s["test_acc_final"] <= 1


def test_without_a_held_out_split_the_summary_says_the_test_split_selected(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.loop import train

    s = train(validate(compose_cfg(*TINY, "data.n_train=128", "data.n_val=40", "trainer.max_steps=2")), tmp_path)
    assert s["selected_on"] == "test" and "test_acc_selected" not in s


def test_a_per_step_shrink_of_one_or_more_is_refused_under_any_scaling(tmp_path):
    from conftest import compose_cfg

    from runner.config import ConfigError, validate
    from runner.engine.loop import train

    cfg = validate(compose_cfg(*TINY, "optimizer.wd_scaling=lr", "lr=2", "wd=0.6"))  # d_t = lr_t·λ = 1.2
    with pytest.raises(
        ConfigError, match=r"^wd=0.6 makes the per-step shrink d_t reach 1.2 \(optimizer.wd_scaling=lr\)"
    ):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_signal_while_the_summary_is_written_waits_for_it_and_is_passed_on_after(tmp_path, monkeypatch):
    """SIGTERM after the loop (a SLURM time limit at the last step): the summary is still written whole, and the
    handler that was there before the run (submitit's requeue) gets the signal once, after summary.json exists."""
    import os
    import signal

    from conftest import compose_cfg

    import runner.engine.summary as summary_mod
    from runner.config import validate
    from runner.engine.loop import train

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append((tmp_path / "summary.json").exists()))
    real = summary_mod.oscillation_block

    def signalled(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(summary_mod, "oscillation_block", signalled)
    try:
        s = train(validate(compose_cfg(*TINY, "trainer.max_steps=3")), tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert s["status"] == "completed" and seen == [True]


def test_a_run_whose_metrics_file_was_removed_still_ends_with_its_summary(tmp_path, monkeypatch):
    from conftest import compose_cfg

    import runner.engine.loop as loop_mod
    from runner.config import validate

    real = loop_mod.take_step

    def removing(run, x, y):
        if run.state.step == 2:
            (tmp_path / "metrics.jsonl").unlink()
        return real(run, x, y)

    monkeypatch.setattr(loop_mod, "take_step", removing)
    s = loop_mod.train(validate(compose_cfg(*TINY, "trainer.max_steps=4")), tmp_path)
    assert (
        s["status"] == "completed" and (tmp_path / "summary.json").is_file() and s["oscillation"]["n_val_points"] == 0
    )


def test_a_deterministic_run_leaves_torchs_process_wide_settings_as_it_found_them(tmp_path):
    """trainer.deterministic switches on torch's deterministic algorithms for the whole process: the
    next job of a sweep in the same process must not inherit them."""
    import torch
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.loop import train

    assert not torch.are_deterministic_algorithms_enabled()
    seen = []
    cfg = validate(compose_cfg(*TINY, "trainer.max_steps=2", "trainer.deterministic=true"))
    s = train(cfg, tmp_path, on_start=lambda: seen.append(torch.are_deterministic_algorithms_enabled()))
    assert s["status"] == "completed" and seen == [True]  # on while it trained
    assert not torch.are_deterministic_algorithms_enabled()  # off again, as before the run


def a_card(monkeypatch, major: int, name: str = "Tesla V100-SXM2-16GB"):
    """torch.cuda.get_device_properties answering for a card of compute capability `major`.0."""
    from types import SimpleNamespace

    import torch

    props = SimpleNamespace(major=major, minor=0, name=name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)


@pytest.mark.parametrize("major,precision", [(8, "bf16"), (9, "bf16"), (7, "fp32"), (6, "fp32")])
def test_precision_auto_is_bf16_only_on_a_card_that_computes_it(monkeypatch, major, precision):
    """Before compute capability 8.0 (Ampere) torch emulates bfloat16, slower than float32."""
    import torch

    from runner.config import TrainerConfig
    from runner.engine.build import execution_path

    a_card(monkeypatch, major)
    path = execution_path(TrainerConfig(device="cuda"), torch.device("cuda", 1))
    assert path["precision"] == precision
    fp32 = execution_path(TrainerConfig(device="cuda", precision="fp32"), torch.device("cuda", 0))
    assert fp32["precision"] == "fp32"


def test_precision_bf16_on_a_card_without_it_is_refused_with_the_fix(monkeypatch):
    import torch

    from runner.config import ConfigError, TrainerConfig
    from runner.engine.build import execution_path

    a_card(monkeypatch, 7)
    refused = r"^trainer.precision=bf16: Tesla V100.*7\.0.*precision=auto"
    with pytest.raises(ConfigError, match=refused):
        execution_path(TrainerConfig(device="cuda", precision="bf16"), torch.device("cuda", 0))
    a_card(monkeypatch, 8, "NVIDIA A100")
    path = execution_path(TrainerConfig(device="cuda", precision="bf16"), torch.device("cuda", 0))
    assert path["precision"] == "bf16"
