"""analysis.report on fake run folders written by hand (the contract of summary.json / metrics.jsonl
/ .hydra)."""

import csv
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest
import yaml

from runner.analysis.figures import NOISE_SPAN, heatmap_grid, oscillation_series
from runner.analysis.report import main
from runner.analysis.runs import collect_runs, group_configs, varying_keys

PNG = b"\x89PNG\r\n\x1a\n"


def hparams(lr, wd, seed, l2=0.0, opt="adamw"):
    return {
        "lr": lr,
        "wd": wd,
        "l2": l2,
        "epochs": 3,
        "batch_size": 128,
        "seed": seed,
        "model": {"name": "resnet20v1", "depth": 20, "version": 1, "bn_momentum": 0.1},
        "optimizer": {"name": opt, "algorithm": "adam", "betas": [0.9, 0.999]},
        "schedule": {"name": "piecewise_constant", "milestones": [0.5, 0.75]},
        "data": {"name": "synthetic", "root": f"/data/{seed}"},
        "trainer": {"device": "cpu", "channels_last": None},
    }


def records(val_losses, accs, n_steps=2):
    """n_steps train records per epoch, then one val record; weight_norm on each epoch's last
    step."""
    out = []
    for ep, (v, a) in enumerate(zip(val_losses, accs), start=1):
        for k in range(n_steps):
            step = (ep - 1) * n_steps + k + 1
            r = {
                "step": step,
                "epoch": step / n_steps,
                "train_loss": None if v is None else v / 2,
                "lr": 1e-3,
                "decay": 1e-6,
            }
            if k == n_steps - 1:
                r.update(weight_norm=10.0 + ep, l2_penalty=0.0)
            out.append(r)
        running = {"val_loss_running": v, "val_acc_running": a}
        out.append(
            {"step": ep * n_steps, "epoch": float(ep), **running, "val_loss": v, "val_acc": a}
        )
    return out


def make_run(
    d,
    hp,
    status="completed",
    val=(2.0, 1.0, 1.2),
    accs=(0.5, 0.8, 0.9),
    summary=True,
    metrics=True,
    half_line=False,
):
    (d / ".hydra").mkdir(parents=True)
    cfg = json.loads(json.dumps(hp))
    cfg["trainer"].pop("channels_last")  # Hydra's YAML need not hold every schema key
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"lr={hp['lr']}", f"wd={hp['wd']}"])
    )
    recs = records(val, accs)
    if metrics:
        text = "".join(json.dumps(r) + "\n" for r in recs)
        (d / "metrics.jsonl").write_text(text + ('{"step": 99, "epo' if half_line else ""))
    if summary:
        finite = [(v, a) for v, a in zip(val, accs) if v is not None]
        s = {
            "status": status,
            "n_params": 1000,
            "steps": len(val) * 2,
            "epochs": float(len(val)),
            "best_val_acc": max(a for _, a in finite),
            "final_val_acc": finite[-1][1],
            "final_val_loss": finite[-1][0],
            "final_train_loss": 0.5,
            "wall_time_s": 1.0,
            "images_per_s": 100.0,
            "device": "cpu",
            "regularization": ["..."],
            "hparams": hp,
            "choices": {"optimizer": hp["optimizer"]["name"]},
        }
        (d / "summary.json").write_text(json.dumps(s))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2×2 lr × wd sweep: two seeds in one cell, an interrupted seed, a diverged cell, a running
    cell, a job not started."""
    root = tmp_path_factory.mktemp("runs")
    sw = root / "multirun" / "2024-05-01" / "10-00-00_abc123"
    jobs = [
        (hparams(1e-3, 1e-4, 0), dict(accs=(0.5, 0.8, 0.90))),
        (hparams(1e-3, 1e-4, 1), dict(accs=(0.5, 0.8, 0.92))),
        (hparams(1e-3, 5e-4, 0), dict(accs=(0.5, 0.8, 0.88))),
        (
            hparams(3e-3, 1e-4, 0),
            dict(status="diverged", val=(2.0, None, None), accs=(0.3, 0.1, 0.1)),
        ),
        # running: metrics.jsonl only
        (
            hparams(3e-3, 5e-4, 0),
            dict(summary=False, half_line=True),
        ),
        (hparams(3e-3, 5e-4, 1), dict(summary=False, metrics=False)),  # not started: .hydra only
        (hparams(1e-3, 5e-4, 1), dict(status="interrupted", val=(2.0,), accs=(0.4,))),
    ]
    for i, (hp, kw) in enumerate(jobs):
        make_run(sw / str(i), hp, **kw)
    (sw / "multirun.yaml").write_text("hydra: {}\n")
    return root


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([str(sweep), "--out", str(out)])
    return rc, buf.getvalue(), out


STATUS = {
    "0": "completed",
    "1": "completed",
    "2": "completed",
    "3": "diverged",
    "4": "running",
    "5": "not started",
    "6": "interrupted",
}


def test_collect_runs_finds_every_job_with_its_status(sweep):
    runs = collect_runs(sweep)
    assert {r["path"].rsplit("/", 1)[1]: r["status"] for r in runs} == STATUS
    running = next(r for r in runs if r["status"] == "running")
    assert running["hparams"]["lr"] == 3e-3 and running["best_val_acc"] == 0.9  # from metrics.jsonl
    assert running["steps"] == 6 and running["osc"]["n_val_points"] == 3


def test_varying_keys_are_the_swept_ones(sweep):
    # seed and data.root differ too, trainer.channels_last is missing from the YAML-only runs: none
    # of them is swept
    assert varying_keys(collect_runs(sweep)) == ["lr", "wd"]


def test_seed_average(sweep):
    groups = group_configs(collect_runs(sweep))
    g = next(g for g in groups if g["values"] == {"lr": 1e-3, "wd": 1e-4})
    assert g["n"] == 2
    mean, std = g["stats"]["best_val_acc"]
    # sample std of 0.90, 0.92
    assert mean == pytest.approx(0.91) and std == pytest.approx(0.02 / 2**0.5)
    g = next(g for g in groups if g["values"] == {"lr": 1e-3, "wd": 5e-4})
    # the interrupted seed does not count
    assert g["n"] == 1 and g["stats"]["best_val_acc"] == (
        0.88,
        None,
    )
    assert dict(g["statuses"]) == {"completed": 1, "interrupted": 1}


def test_heatmap_grid_axes_and_cells(sweep):
    runs = collect_runs(sweep)
    grid = heatmap_grid(group_configs(runs), varying_keys(runs))
    assert (grid["x_key"], grid["y_key"], grid["panel_keys"]) == ("lr", "wd", [])
    assert grid["x_values"] == [1e-3, 3e-3] and grid["y_values"] == [1e-4, 5e-4]
    (panel,) = grid["panels"]
    assert panel["values"][0][0] == pytest.approx(0.91) and panel["values"][1][0] == pytest.approx(
        0.88
    )
    assert panel["values"][0][1] is None and panel["labels"][0][1] == "div"
    assert panel["values"][1][1] is None and panel["labels"][1][1] == "run"


def fake_run(status="completed", best=0.9, **hp):
    return {
        "path": "x",
        "status": status,
        "seed": 0,
        "hparams": hp,
        "best_val_acc": best,
        "osc": {"tv_per_epoch": hp.get("wd", 0) + hp.get("l2", 0), "max_rise_rel": 0.1},
    }


def test_heatmap_falls_back_to_swept_keys_and_panels_per_optimizer():
    runs = [
        fake_run(**{"optimizer.name": o, "lr": lr, "wd": 0.0, "l2": l2, "epochs": e})
        for o in ("adam_l2", "adamw")
        for lr in (1e-3, 3e-3)
        for l2 in (1e-4, 2e-4, 4e-4)
        for e in (3, 3.0)
    ]
    keys = varying_keys(runs)
    assert keys == ["optimizer.name", "lr", "l2"]
    grid = heatmap_grid(group_configs(runs, keys), keys)  # wd does not vary: y falls back to l2
    assert (grid["x_key"], grid["y_key"], grid["panel_keys"]) == ("lr", "l2", ["optimizer.name"])
    assert [p["title"] for p in grid["panels"]] == [
        "optimizer.name=adam_l2",
        "optimizer.name=adamw",
    ]
    assert len(grid["panels"][0]["values"]) == 3 and len(grid["panels"][0]["values"][0]) == 2
    assert heatmap_grid(group_configs(runs[:1]), []) is None  # one configuration: no heat map


def test_heatmap_merges_wd_and_l2_into_one_decay_axis():
    # the paper's Figure 2: Adam-L2 sweeps l2, AdamW sweeps wd, one panel each on a shared λ axis
    runs = [
        fake_run(**{"optimizer.name": "adam_l2", "lr": lr, "wd": 0.0, "l2": lam})
        for lr in (1, 2)
        for lam in (1, 2)
    ]
    runs += [
        fake_run(**{"optimizer.name": "adamw", "lr": lr, "wd": lam, "l2": 0.0})
        for lr in (1, 2)
        for lam in (1, 2)
    ]
    keys = varying_keys(runs)
    grid = heatmap_grid(group_configs(runs, keys), keys)
    assert (grid["x_key"], grid["y_key"], grid["panel_keys"]) == ("lr", "wd|l2", ["optimizer.name"])
    assert grid["y_values"] == [1, 2] and len(grid["panels"]) == 2
    s = oscillation_series(group_configs(runs, keys), keys)
    assert list(s) == [
        "optimizer.name=adam_l2, lr=1",
        "optimizer.name=adam_l2, lr=2",
        "optimizer.name=adamw, lr=1",
        "optimizer.name=adamw, lr=2",
    ]
    assert [lam for lam, _ in s["optimizer.name=adam_l2, lr=1"]] == [1, 2]


def test_oscillation_series_one_line_per_optimizer():
    runs = [
        fake_run(**{"optimizer.name": o, "wd": wd, "l2": 0.0})
        for o in ("adam_l2", "adamw")
        for wd in (0.0, 1e-4)
    ]
    keys = varying_keys(runs)
    s = oscillation_series(group_configs(runs, keys), keys)
    assert list(s) == ["optimizer.name=adam_l2", "optimizer.name=adamw"]
    assert [lam for lam, _ in s["optimizer.name=adamw"]] == [0.0, 1e-4]
    assert s["optimizer.name=adamw"][1][1]["tv_per_epoch"] == pytest.approx(1e-4)


def test_the_runs_table_lists_every_run(report):
    rc, _, out = report
    assert rc == 0
    md = (out / "report.md").read_text()
    table = md.split("## Runs", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in table.splitlines() if "/10-00-00_abc123/" in line]
    assert len(lines) == 7
    for job, status in STATUS.items():
        assert any(f"abc123/{job} | {status} |" in line for line in lines)
    # the seed-averaged configuration row: 0.90 and 0.92, t₁·s/√2 = 12.7·0.01 wide
    assert "| 0.91 [0.783, 1.04] |" in md


def test_runs_csv_has_every_run(report):
    rows = list(csv.DictReader(open(report[2] / "runs.csv", encoding="utf-8")))
    assert sorted(r["status"] for r in rows) == sorted(STATUS.values())
    assert {"lr", "wd", "best_val_acc", "tv_per_epoch", "n_rises", "optimizer.name"} <= set(rows[0])
    assert rows[0]["epochs"] == "3" and rows[0]["epochs_done"] == "3.0"  # scheduled vs done
    cfg = list(csv.DictReader(open(report[2] / "configs.csv", encoding="utf-8")))
    assert len(cfg) == 4


@pytest.mark.parametrize(
    "name", ["val_curves.png", "weight_norm.png", "heatmap.png", "oscillation.png"]
)
def test_figures_are_valid_pngs(report, name):
    path = report[2] / name
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert f"]({name})" in (report[2] / "report.md").read_text()


def test_single_run_skips_figures_it_cannot_draw(tmp_path, capsys):
    make_run(tmp_path / "run", hparams(1e-3, 1e-4, 0))
    assert main([str(tmp_path / "run")]) == 0
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "heatmap.png skipped: needs at least two configurations" in md
    assert "oscillation.png skipped" in md and "](val_curves.png)" in md
    assert "| run | completed |" in md
    # the oscillation figures come from metrics.jsonl, at the threshold asked for
    assert collect_runs(tmp_path)[0]["osc"]["tv_per_epoch"] == pytest.approx(1.2 / 2)
    assert collect_runs(tmp_path, threshold=0.2)[0]["osc"]["rise_threshold"] == 0.2


def test_missing_or_empty_dir_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err


def test_cli_error_has_no_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "runner.analysis.report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.strip() == f"runner.analysis.report: error: no such folder: {tmp_path / 'nope'}"


def test_a_config_that_cannot_be_resolved_is_a_note_not_a_crash(tmp_path, capsys):
    make_run(tmp_path / "sweep" / "0", hparams(1e-3, 1e-4, 0))
    make_run(tmp_path / "sweep" / "1", hparams(1e-3, 1e-4, 1), summary=False)
    with open(tmp_path / "sweep" / "1" / ".hydra" / "config.yaml", "a") as f:
        # Hydra's own resolver is not there outside Hydra
        f.write("out: ${hydra:runtime.output_dir}\n")
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    note = "could not resolve out in .hydra/config.yaml: shown unresolved"
    assert f"## Notes\n\n- 1: {note}\n" in (tmp_path / "rep" / "report.md").read_text()
    assert f"- 1: {note}" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "rep" / "runs.csv", encoding="utf-8")))
    assert [r["notes"] for r in rows] == ["", note]


def test_one_loss_figure_per_run_listed_in_the_report(report):
    _, _, out = report
    md = (out / "report.md").read_text()
    for job, status in STATUS.items():
        name = f"runs/multirun__2024-05-01__10-00-00_abc123__{job}.png"
        if status == "not started":  # nothing recorded yet: a one-line reason instead
            assert (
                f"- multirun/2024-05-01/10-00-00_abc123/{job} skipped: no validation records" in md
            )
            assert not (out / name).exists()
        else:
            assert f"- [multirun/2024-05-01/10-00-00_abc123/{job}]({name})" in md
            assert (out / name).read_bytes()[:8] == PNG
    assert "capped" not in md


def test_loss_figures_are_capped(tmp_path, monkeypatch):
    import runner.analysis.report

    for i in range(3):
        make_run(tmp_path / "sweep" / str(i), hparams(1e-3, 1e-4, i))
    monkeypatch.setattr(runner.analysis.report, "MAX_RUN_FIGURES", 2)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    assert sorted(p.name for p in (tmp_path / "rep" / "runs").iterdir()) == ["0.png", "1.png"]
    assert (
        "- capped at 2 runs: the other 1 have no loss figure"
        in (tmp_path / "rep" / "report.md").read_text()
    )


def test_tables_show_the_recalibrated_columns_only_when_a_run_has_them(tmp_path, report):
    md = (report[2] / "report.md").read_text()
    assert "swing per epoch (recal) |" not in md and "| swing removed by recal |" not in md
    for i, (wd, shift) in enumerate([(1e-4, 0.0), (1e-4, 0.0), (5e-4, 0.1)]):
        make_run(tmp_path / "sweep" / str(i), hparams(1e-3, wd, i))
        path = tmp_path / "sweep" / str(i) / "metrics.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        for r in recs:  # recalibrated: val 2.0, 1.0, 1.2 → 2.0 - shift, 1.0, 1.0
            if "val_loss" in r:  # the recalibrated evaluation becomes the headline
                v = r["val_loss_running"]
                r["val_loss_recal"] = min(v, 1.0) if r["epoch"] > 1 else v - shift
                r["val_acc_recal"] = r["val_acc_running"]
                r["val_loss"], r["val_acc"] = r["val_loss_recal"], r["val_acc_recal"]
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    swing = "| loss swing per epoch (running) | loss swing per epoch (recal) |"
    assert swing + " swing removed by recal |" in md
    assert (
        "| best val acc (recal, selected on test) | final val acc (recal) | final val loss (recal) "
        "|" in md
    )
    # wd=1e-4: TV 1.2/2 = 0.6 running, 1.0/2 = 0.5 recalibrated, so recalibration removes 1/6 of it
    # the configuration row (two identical seeds: an interval of zero width)
    assert "| 0.6 [0.6, 0.6] | 0.5 [0.5, 0.5] | 0.1667 [0.167, 0.167] |" in md
    cfg = list(csv.DictReader(open(tmp_path / "rep" / "configs.csv", encoding="utf-8")))
    assert float(cfg[0]["recal_removed_share_mean"]) == pytest.approx(1 / 6)
    assert float(cfg[1]["tv_per_epoch_recal_mean"]) == pytest.approx(0.9 / 2)  # 1.9 → 1.0 → 1.0
    assert (tmp_path / "rep" / "oscillation.png").read_bytes()[:8] == PNG


def with_oscillation(monkeypatch, osc: dict) -> None:
    """Runs whose records' oscillation figures (analysis.oscillation) are these, by run folder
    name: what a run with the staleness probe on would give, without training one."""
    import runner.analysis.runs as runs_mod

    real = runs_mod.load_run

    def load_run(d, root, threshold=None):
        run = real(d, root, threshold)
        run["osc"].update(osc.get(d.name, {}))
        return run

    monkeypatch.setattr(runs_mod, "load_run", load_run)


def add_angles(d, speed, pred=0.04):
    """Log records of the angle per step in the middle third of the 3-epoch run (epoch 1 to 2)."""
    recs = [
        {"step": s, "epoch": s / 2, "angular_update_step/stages.0": speed}
        | ({"angular_update_step_pred": pred} if pred else {})
        for s in (2, 3)
    ]
    with open(d / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))


def test_the_staleness_table_and_figure_put_each_optimizer_on_its_own_axis(tmp_path, monkeypatch):
    runs = [("0", "adamw", 1e-3, 0.0, 0.1, 0.05), ("1", "adam_l2", 0.0, 1e-3, None, 0.01)]
    oscs = {}
    for name, opt, wd, l2, tau, speed in runs:
        d = tmp_path / "sweep" / name
        make_run(d, hparams(1e-3, wd, 0, l2=l2, opt=opt))
        oscs[name] = {
            "dispersion": 0.3,
            "dispersion_recal": 0.1,
            "gap_share": 0.8,
            "bn_staleness_mu": 0.2,
            "bn_lag_mu": 0.15,
            "gap_lag_mean": 0.4,
            "gap_mismatch_mean": 0.1,
            "rise_threshold": 0.1,
        }
        summary = json.loads((d / "summary.json").read_text())
        summary["timescale"] = {"tau_fraction": tau, "tau_epoch_wa": tau and tau * 1.5}
        (d / "summary.json").write_text(json.dumps(summary))
        add_angles(d, speed, pred=0.04 if tau else None)
    with_oscillation(monkeypatch, oscs)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md.split("## BatchNorm staleness", 1)[1]
    # AdamW: τ/T and Wang & Aitchison's τ in epochs
    assert (
        "| τ/T=0.1 (W&A τ 0.15 ep) | 0.3 | 0.1 | 0.8 | 0.4 | 0.1 | 0.2 | 0.15 | 0.05 | 0.04 |"
        in table
    )
    assert "| λ₂=0.001 | 0.3 |" in table  # Adam + L2: its own λ₂, no prediction
    assert "| 0.01 | - |" in table
    assert (tmp_path / "rep" / "staleness.png").read_bytes()[:8] == PNG


def test_no_staleness_table_without_staleness_records(report):
    assert "## BatchNorm staleness" not in report[1]
    assert "staleness.png skipped" in (report[2] / "report.md").read_text()


# ---------------------------------------------------------------- read without the code


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report saves, by file name: its words are checked, not its pixels."""
    from pathlib import Path

    from matplotlib.figure import Figure

    figures, save = {}, Figure.savefig

    def keep(self, path, *args, **kwargs):
        figures[Path(path).name] = self
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def words(fig) -> list[str]:
    """Every text a figure shows: title, panel titles, axis labels, tick labels, legends, notes."""
    out = [fig._suptitle.get_text()] if fig._suptitle else []
    for a in fig.axes:
        out += [a.get_title(), a.get_xlabel(), a.get_ylabel(), *(t.get_text() for t in a.texts)]
        out += [t.get_text() for t in a.get_xticklabels() + a.get_yticklabels()]
        legend = a.get_legend()
        out += [t.get_text() for t in legend.get_texts()] if legend else []
    for legend in fig.legends:
        out += [t.get_text() for t in legend.get_texts()]
    return [w for w in out if w]


def test_the_console_shows_a_short_ranking_then_where_the_full_tables_are(sweep, report):
    rc, stdout, out = report
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{sweep.name}: 7 runs (") and "in 4 configurations" in lines[0]
    assert "best val acc (running BN statistics, selected on test)" in stdout
    assert "| 1 | lr=0.001, wd=0.0001 | 0.910 [0.783, 1.037] | 2 |" in stdout  # ranked by its mean
    assert "| 2 | lr=0.001, wd=0.0005 | 0.880 | 1 (1 interrupted) |" in stdout
    assert "| - | lr=0.003, wd=0.0001 | - | 0 (1 diverged) |" in stdout
    assert "abc123/0 | completed" not in stdout  # the table of every run is in the files
    assert lines[-1] == f"Every run, every figure and what the names mean: {out / 'report.md'}"


def test_report_md_opens_on_the_leaderboard_and_says_what_its_words_mean(report):
    md = (report[2] / "report.md").read_text()
    head, rest = md.split("## Leaderboard", 1)
    assert "resnet20v1" in head and "synthetic" in head  # what trained on what
    first = rest.index("| 1 | lr=0.001, wd=0.0001 | 0.910 [0.783, 1.037] |")
    assert first < rest.index("## Configurations")
    assert "selected on the test split" in rest.split("##", 1)[0]
    terms = md.split("## What the names mean", 1)[1].split("\n## ", 1)[0]
    for term in ("loss swing per epoch", "largest rise", "running", "recal", "n", "selected on"):
        assert f"**{term}**" in terms, term
    lines = md.splitlines()
    headers = " ".join(a for a, b in zip(lines, lines[1:]) if b.startswith("|---"))
    for jargon in ("TV/epoch", "total variation", "dispersion", "gap:", "√(2d)", "μ"):
        assert jargon not in headers, jargon  # in words (the terms name runs.csv's keys)
    assert "1 runs" not in md


def test_one_run_is_one_run(tmp_path, capsys):
    make_run(tmp_path / "run", hparams(1e-3, 1e-4, 0))
    assert main([str(tmp_path / "run")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("run: 1 run (1 completed) in 1 configuration;"), first


def test_a_runs_name_and_tags_are_in_its_row_and_titles_when_its_folder_does_not_show_them(
    tmp_path, capsys
):
    make_run(tmp_path / "run", {**hparams(1e-3, 1e-4, 0), "name": "baseline", "tags": ["a", "b"]})
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| run | name | tags | status | seed |" in md and "| baseline | a, b | completed |" in md
    assert "/run · baseline · resnet20v1 · synthetic." in md.splitlines()[2]
    named = tmp_path / "outputs" / "2026-01-01" / "10-00-00_abc123_baseline"
    make_run(named, {**hparams(1e-3, 1e-4, 0), "name": "baseline"})
    assert main([str(named), "--out", str(tmp_path / "rep2")]) == 0
    assert " · baseline · " not in (tmp_path / "rep2" / "report.md").read_text()  # said once
    make_run(tmp_path / "plain", hparams(1e-3, 1e-4, 0))
    assert main([str(tmp_path / "plain"), "--out", str(tmp_path / "rep3")]) == 0
    assert "| run | status | seed |" in (tmp_path / "rep3" / "report.md").read_text()


def test_every_figure_is_titled_with_sweep_model_and_data_and_axes_in_words(sweep, tmp_path, drawn):
    assert main([str(sweep), "--out", str(tmp_path / "rep")]) == 0
    assert {"val_curves.png", "heatmap.png", "weight_norm.png", "oscillation.png"} <= set(drawn)
    for name, fig in drawn.items():
        title = fig._suptitle.get_text()
        assert "multirun" in title and "resnet20v1" in title and "synthetic" in title, (name, title)
        for a in fig.axes:
            if a.get_label() != "<colorbar>" and a.get_visible() and a.has_data():
                assert len(a.get_xlabel()) > 6 and len(a.get_ylabel()) > 6, (name, a.get_xlabel())
    labels = " ".join(words(drawn["oscillation.png"]))
    assert "swing per epoch" in labels and "total variation" not in labels


def test_a_line_of_few_points_has_markers(tmp_path, drawn):
    """One validation per run: each line is one point, drawn as a marker, never a blank panel."""
    for i, wd in enumerate((1e-4, 5e-4)):
        make_run(tmp_path / "sweep" / str(i), hparams(1e-3, wd, 0), val=(2.0,), accs=(0.4,))
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    for a in drawn["val_curves.png"].axes:
        assert a.lines and all(line.get_marker() not in (None, "None", "") for line in a.lines)
    md = (tmp_path / "rep" / "report.md").read_text()  # one validation has no swing or rise
    assert "oscillation.png" not in drawn and "oscillation.png skipped: not enough points" in md


def test_the_heat_map_shows_n_and_spread_and_never_colours_noise_as_signal(sweep, tmp_path, drawn):
    assert main([str(sweep), "--out", str(tmp_path / "rep")]) == 0
    runs = collect_runs(sweep)
    grid = heatmap_grid(group_configs(runs), varying_keys(runs))
    (panel,) = grid["panels"]
    assert panel["labels"][0][0] == "0.910 ± 0.014\nn=2" and panel["labels"][1][0] == "0.880\nn=1"
    assert grid["noise"] == pytest.approx(0.02 / 2**0.5)  # the seeds' spread (no accuracy noise)
    image = drawn["heatmap.png"].axes[0].images[0]
    low, high = image.norm.vmin, image.norm.vmax
    assert high - low == pytest.approx(2 * NOISE_SPAN * grid["noise"])  # 0.91 vs 0.88: muted
    assert "noise" in " ".join(words(drawn["heatmap.png"]))


def test_a_panel_without_points_says_so(tmp_path, drawn, monkeypatch):
    """The staleness figure's right panel needs BatchNorm staleness: these runs have none."""
    oscs = {}
    for i, (wd, speed) in enumerate([(1e-4, 0.02), (5e-4, 0.05)]):
        d = tmp_path / "sweep" / str(i)
        make_run(d, hparams(1e-3, wd, 0))
        oscs[str(i)] = {"dispersion": 0.3, "dispersion_recal": 0.1, "rise_threshold": 0.1}
        add_angles(d, speed)
    with_oscillation(monkeypatch, oscs)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    left, right = drawn["staleness.png"].axes[:2]
    assert left.lines and not right.lines
    assert [t.get_text() for t in right.texts] == ["not enough points"]


# ---------------------------------------------------------------- trusting no run folder


def test_an_environment_value_in_a_saved_config_never_reaches_the_report(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("RUNNER_TEST_SECRET", "hunter2")
    make_run(tmp_path / "sweep" / "0", hparams(1e-3, 1e-4, 0), summary=False)
    with open(tmp_path / "sweep" / "0" / ".hydra" / "config.yaml", "a") as f:
        f.write("token: ${oc.env:RUNNER_TEST_SECRET}\n")
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    for name in ("report.md", "runs.csv", "configs.csv"):
        assert "hunter2" not in (tmp_path / "rep" / name).read_text(), name
    assert "hunter2" not in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "rep" / "runs.csv", encoding="utf-8")))
    assert rows[0]["token"] == "${oc.env:RUNNER_TEST_SECRET}"


def test_an_alias_bomb_in_a_saved_config_is_a_note_and_the_report_goes_on(tmp_path, capsys):
    from conftest import ALIAS_BOMB

    make_run(tmp_path / "sweep" / "0", hparams(1e-3, 1e-4, 0))
    make_run(tmp_path / "sweep" / "1", hparams(1e-3, 1e-4, 1), summary=False)
    (tmp_path / "sweep" / "1" / ".hydra" / "config.yaml").write_text(ALIAS_BOMB)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    assert "1: .hydra/config.yaml unreadable: its aliases expand it past" in capsys.readouterr().out


def test_one_damaged_run_never_sinks_the_report(tmp_path, monkeypatch, capsys):
    import runner.analysis.runs as runs_mod

    make_run(tmp_path / "sweep" / "0", hparams(1e-3, 1e-4, 0))
    make_run(tmp_path / "sweep" / "1", hparams(1e-3, 1e-4, 1))
    real = runs_mod.headline_metrics

    def damaged(summary, records):  # what some unforeseen content of run 1 provokes
        if summary and summary["hparams"]["seed"] == 1:
            raise TypeError("'<' not supported between instances of 'str' and 'float'")
        return real(summary, records)

    monkeypatch.setattr(runs_mod, "headline_metrics", damaged)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "rep" / "runs.csv", encoding="utf-8")))
    assert [r["status"] for r in rows] == ["completed", "unreadable"]
    assert "1: could not be read, left out of every figure (TypeError" in capsys.readouterr().out


def test_formula_like_cells_are_text_in_the_csvs(tmp_path):
    hp = hparams(1e-3, 1e-4, 0)
    hp["data"]["name"] = '=HYPERLINK("http://evil.example","x")'
    make_run(tmp_path / "sweep" / "@SUM(A1)", hp)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    rows = list(csv.reader(open(tmp_path / "rep" / "runs.csv", encoding="utf-8")))
    cells = [c for row in rows for c in row]
    assert "'@SUM(A1)" in cells and """'=HYPERLINK("http://evil.example","x")""" in cells
    assert not any(c.startswith(("=", "@", "+")) for c in cells)
    assert "1e-04" in cells or "0.0001" in cells  # numbers stay numbers


def test_links_planted_in_a_received_report_folder_are_not_written_through(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    run = tmp_path / "run"
    make_run(run, hparams(1e-3, 1e-4, 0))
    (run / "report").symlink_to(tmp_path)  # DIR/report pointing elsewhere
    assert main([str(run)]) == 2 and "is a symbolic link" in capsys.readouterr().err
    (run / "report").unlink()
    (run / "report").mkdir()
    (run / "report" / "runs.csv").symlink_to(victim)
    (run / "report" / "report.md").symlink_to(victim)
    assert main([str(run)]) == 0
    assert victim.read_text() == "the user's own file\n"
    assert not (run / "report" / "runs.csv").is_symlink()
