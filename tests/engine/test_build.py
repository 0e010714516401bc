"""Setting a run up (runner.engine.build): what it refuses before anything is written, what it
compiles, what it says."""

import json

import pytest
from conftest import TINY, run_cli


def test_a_decay_too_small_for_float32_is_reported_in_the_summary(tmp_path, caplog):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.train import train

    # torch's convention: d_t = lr_t·λ = 1e-3·5e-4 = 5e-7 on every step, which float32 weights apply
    # as 4.77e-7
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
    # 1 − 5e-7 rounds to 1 − 8·2^-24
    assert "apply 95.4 % of the decoupled decay" in note and "-4.6 %" in note
    assert any(r.levelname == "WARNING" and r.message == note for r in caplog.records)


@pytest.mark.slow
def test_compiled_model_trains_and_the_compile_time_is_reported_apart(tmp_path):
    r = run_cli(
        [*TINY, "trainer.compile=true", "trainer.max_steps=3", "data.n_train=128", "batch_size=32"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert s["status"] == "completed" and s["steps"] == 3
    steady_step_s = 32 / s["images_per_s"]
    assert s["first_step_s"] > 3 * steady_step_s  # the first step carries torch.compile


def test_a_per_step_shrink_of_one_or_more_is_refused_under_any_scaling(tmp_path):
    from conftest import compose_cfg

    from runner.config import ConfigError, validate
    from runner.engine.train import train

    # d_t = lr_t·λ = 1.2
    cfg = validate(compose_cfg(*TINY, "optimizer.wd_scaling=lr", "lr=2", "wd=0.6"))
    with pytest.raises(
        ConfigError,
        match=r"^wd=0.6 makes the per-step shrink d_t reach 1.2 \(optimizer.wd_scaling=lr\)",
    ):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


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
    assert path.precision == precision
    fp32 = execution_path(TrainerConfig(device="cuda", precision="fp32"), torch.device("cuda", 0))
    assert fp32.precision == "fp32"


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
    assert path.precision == "bf16"
