"""scripts/publish_study.py on a hand-made finished sweep: the folder it writes for docs/results/
(the verdict first, the command, the machine and data, every run's files), and its refusal of a
sweep with a run that did not complete."""

import gzip
import json
import math

import yaml

from scripts import publish_study


def records(k: float) -> list[dict]:
    """Log points whose angle per step is k × the prediction, over 900 steps of 100 an epoch, and
    validations whose log-loss gap is 0.5 per unit of lag."""
    logs = [
        {"step": s, "epoch": s / 100, "angular_update_step/stem": k * 0.02}
        | {"angular_update_step_pred": 0.02, "train_loss": 1.0}
        for s in range(10, 901, 10)
    ]
    lag = lambda s: 0.1 + s / 3000
    vals = [
        {"step": s, "epoch": s / 100, "val_loss_recal_aug": 1.0, "bn_lag_rms": lag(s)}
        | {"val_loss_running": math.exp(0.5 * lag(s)), "val_loss_shadow@0.3": 1.0}
        for s in range(300, 901, 100)
    ]
    return logs + vals


def sweep(tmp_path, statuses=("completed", "completed")):
    root = tmp_path / "multirun" / "2026-12-08" / "10-00-00_abc123"
    task = ["experiment=oscillation_study_cpu", "data.root=/home/me/cifar"]
    saved = {"hydra": {"overrides": {"task": task}}}
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump(saved))
    for i, (status, k) in enumerate(zip(statuses, (0.9, 1.1))):
        job = root / f"{i}_arm=adamw_tau0.05,seed={i}"
        (job / ".hydra").mkdir(parents=True)
        hp = {"epochs": 9, "seed": i, "model": {"bn_momentum": 0.01}}
        env = {"cpu_name": "Test CPU", "cpu_count": 2, "torch_threads": 2, "python": "3.12.3"}
        env |= {"torch": "2.0", "torchvision": "0.1", "platform": "Linux"}
        summary = {
            "status": status,
            "hparams": hp,
            "best_val_acc": 0.5,
            "wall_time_s": 300.0 + i,
            "test_acc_selected": 0.48,
            "env": env,
            "code": {"commit": "abc1234", "dirty": False},
            "data": {"name": "image_folder", "source": "image_folder", "n_train": 8000}
            | {"n_val": 500, "fingerprint": "f00d"},
        }
        (job / "summary.json").write_text(json.dumps(summary))
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(k)))
    return root


def test_a_finished_sweep_becomes_a_results_folder_that_opens_on_its_verdict(tmp_path):
    out = tmp_path / "docs" / "results" / "2026-12-08-cpu-oscillation"
    assert publish_study.main([str(sweep(tmp_path)), "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert readme.index("## Verdict") < readme.index("## How it was made")
    assert (
        "1 (n = " not in readme and "× Kosson et al.'s prediction" in readme
    )  # 2 runs: an interval
    assert "python -m runner experiment=oscillation_study_cpu data.root=DIR" in readme
    assert "/home/me" not in readme  # the machine's folder is not the data's name
    assert (
        "Test CPU, 2 cores" in readme
        and "commit abc1234" in readme
        and "fingerprint f00d" in readme
    )
    assert "| 1_arm=adamw_tau0.05,seed=1 | completed | 301 | 0.4800 |" in readme
    for name in ("report.md", "chain.png", "runs.csv", "configs.csv"):
        assert (out / name).is_file(), name
    job = "0_arm=adamw_tau0.05,seed=0"
    assert json.loads((out / f"{job}.summary.json").read_text())["status"] == "completed"
    with gzip.open(out / f"{job}.metrics.jsonl.gz", "rt") as f:
        assert len(f.readlines()) == 90 + 7
    assert not (out / "runs").exists()  # no per-run loss figures: the records hold them


def test_a_sweep_with_a_run_that_did_not_complete_is_refused_unless_partial(tmp_path, capsys):
    root = sweep(tmp_path, statuses=("completed", "interrupted"))
    out = tmp_path / "out"
    assert publish_study.main([str(root), "--out", str(out)]) == 2
    assert "not completed: 1_arm" in capsys.readouterr().err and not out.exists()
    assert publish_study.main([str(root), "--out", str(out), "--partial"]) == 0
    assert "Not completed, published as they are: 1_arm" in (out / "README.md").read_text()
    assert publish_study.main([str(tmp_path), "--out", str(out)]) == 2  # not a sweep folder
