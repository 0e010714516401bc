"""The study presets (configs/experiment/oscillation_study*.yaml): every arm composes, validates and
plans; each holds its validation out of training, keeps the BatchNorm control inside each run
(shadow statistics) and runs three seeds an arm; `debug=tiny` shrinks each (configs/shrink) to a run
the CLI finishes in seconds a job."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import CONFIG_DIR, compose_cfg, run_cli

from runner.config import validate
from runner.core.step_plan import plan_steps, timescale

STUDIES = {
    "oscillation_study": (
        "adamw_tau0.03,adamw_tau0.1,adamw_tau0.3,adamw_tau1,adam_l2_1e-4,adam_l2_1e-3,adam_l2_1e-2"
    ),
    "oscillation_study_cpu": "adamw_tau0.05,adamw_tau0.15,adamw_tau0.5,adam_l2_1e-3",
}


def preset(name: str, group: str = "experiment") -> dict:
    return yaml.safe_load((Path(CONFIG_DIR) / group / f"{name}.yaml").read_text())


@pytest.mark.parametrize("study", STUDIES)
def test_a_study_sweeps_its_arms_over_three_seeds_with_shadows_and_a_held_out_split(study):
    params = preset(study)["hydra"]["sweeper"]["params"]
    assert params == {"arm": STUDIES[study], "seed": "0,1,2"}
    root = ["data.root=/data"] if study.endswith("cpu") else []
    for arm in STUDIES[study].split(","):
        c = validate(compose_cfg(f"experiment={study}", f"arm={arm}", *root))
        assert c.data.val_split and c.report and c.trainer.bn_recalibrate != 0
        assert len(c.probes.shadow_bn) == 4 and c.probes.bn_staleness and c.probes.step_angle
        if arm.startswith("adamw"):  # τ/T, the decay's timescale, sets λ; no L2
            assert (c.optimizer.name, c.optimizer.wd_tau, c.l2) == (
                "adamw",
                float(arm.split("tau")[1]),
                0.0,
            )
        else:  # λ₂ alone, no decoupled decay
            assert (c.optimizer.name, c.l2, c.wd, c.optimizer.wd_tau) == (
                "adam_l2",
                float(arm[8:]),
                0.0,
                None,
            )


def test_the_cpu_study_is_the_size_its_arithmetic_says():
    c = validate(compose_cfg("experiment=oscillation_study_cpu", "data.root=/data"))
    spe = c.data.subset // c.batch_size
    assert (c.model.depth, c.model.version, spe, c.epochs) == (20, 1, 125, 10)
    assert c.trainer.val_every * 2 <= spe  # twice an epoch: the scatter's bias under 10 %
    assert min(c.probes.shadow_bn) == 0.005 and c.trainer.device == "cpu"
    # the slowest shadow set leaves its warm-up (5 % left) well inside the 1,250 steps
    assert (1 - min(c.probes.shadow_bn)) ** 600 < 0.05


@pytest.mark.parametrize("study", STUDIES)
def test_debug_tiny_shrinks_every_arm_to_a_plan_the_runner_accepts(study):
    """debug=tiny alone would give τ/T = 0.03 a timescale of half a step (refused); the shrink
    gives the run 192 smaller steps, so every arm keeps its τ/T and its shrink stays below 1."""
    assert preset(f"tiny_{study}", "shrink")["hydra"]["sweeper"]["params"] == {"seed": 0}
    for arm in STUDIES[study].split(","):
        c = validate(compose_cfg(f"experiment={study}", "debug=tiny", f"arm={arm}"))
        n_train = c.data.n_train - c.data.val_split
        assert c.data.source == "synthetic" and c.data.val_split and c.probes.shadow_bn
        plan = plan_steps(c, n_train, n_train // c.batch_size, c.epochs)
        assert len(plan.d) == 192 and max(plan.d) < 0.5
        if c.optimizer.wd_tau:
            assert timescale(plan, 192, "adam", 0.9)["tau_fraction"] == pytest.approx(
                c.optimizer.wd_tau
            )


def test_debug_tiny_alone_and_other_experiments_are_not_shrunk():
    assert validate(compose_cfg("debug=tiny")).batch_size == 64
    assert validate(compose_cfg("experiment=adamw_20ep", "debug=tiny")).batch_size == 64


@pytest.mark.slow
def test_the_tiny_study_runs_through_the_cli_to_its_report(tmp_path):
    """The arm of `experiment=oscillation_study debug=tiny` that debug=tiny alone refused (τ/T =
    0.03) runs to the end through the CLI, held out, with shadow statistics, and its report opens
    on its verdict (one arm: the others compose and plan above)."""
    r = run_cli(
        [
            "experiment=oscillation_study",
            "debug=tiny",
            "hydra.sweeper.params.arm=adamw_tau0.03",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = (tmp_path / "sweep").glob("*/summary.json")
    s = json.loads(path.read_text())
    assert s["status"] == "completed" and s["selected_on"] == "val_split"
    assert "test_acc_selected" in s and s["probes"]["step_angle"]["stages.1"]["share"] > 0.98
    assert s["applied"]["wd"] > 0.1 and s["hparams"]["wd"] == 5e-4  # the λ τ/T set, and the config
    assert s["timescale"]["tau_fraction"] == pytest.approx(0.03)
    records = [json.loads(line) for line in (path.parent / "metrics.jsonl").open()]
    assert any("val_loss_shadow@0.3" in x and "bn_lag_rms@0.3/stages.2" in x for x in records)
    md = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Leaderboard")
