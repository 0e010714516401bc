"""The report's verdict and its link-by-link tables (analysis.verdict) on hand-made chain records of
known answer: three seeds whose every link holds with a known factor."""

import json
import math

import pytest

from runner.analysis.chain import chain_fits
from runner.analysis.chain_figure import chain_points
from runner.analysis.report import main
from runner.analysis.verdict import chain_section, interval, verdict_section

T4_2 = 4.302652729911275  # t_{2, 0.975}


def chain_records(k: float, slope: float = 0.5) -> list[dict]:
    """900 steps of 100 an epoch (T = 9 epochs): log points every 10 steps whose angle is k × the
    prediction; validations every 100 steps whose drift is 2σ per radian, whose lags are k × the
    prediction with its floors, and whose loss gap is `slope` per unit of lag."""
    out, angle = [], lambda s: 0.02 * (1 + s / 900)  # the prediction grows along the run
    for s in range(10, 901, 10):
        rec = {"step": s, "epoch": s / 100, "angular_update_step/stages.0": k * angle(s)}
        rec["angular_update_step_pred"] = angle(s)
        out.append(rec)
        if s % 100:
            continue
        val = {"step": s, "epoch": s / 100, "val_loss_recal_aug": 1.0, "bn_shadow_batches": s}
        val["bn_drift_mu/stages.0"] = 2 * k * sum(angle(t) for t in range(s - 90, s + 1, 10)) / 10
        for sfx, lag in (("", 0.3), ("@0.3", 0.05)):
            pred, noise, ref = 0.8 * lag, 0.6 * lag, 0.0
            val[f"bn_lag_rms{sfx}/stages.0"] = k * math.sqrt(pred**2 + noise**2 + ref**2)
            val[f"bn_lag_pred_rms{sfx}/stages.0"] = pred
            val[f"bn_noise_rms{sfx}/stages.0"] = noise
            val[f"bn_lag_rms{sfx}"] = lag
            loss = math.exp(slope * lag)
            val["val_loss_running" if not sfx else f"val_loss_shadow{sfx}"] = loss
        val["bn_ref_noise_rms/stages.0"] = 0.0
        out.append(val)
    return out


def runs(factors=(0.9, 1.0, 1.1)):
    hp = {"epochs": 9, "model.bn_momentum": 0.1, "optimizer.name": "adamw"}
    return [
        {"path": f"s{i}", "status": "completed", "chain_records": chain_records(k), "hparams": hp}
        for i, k in enumerate(factors)
    ]


def test_an_interval_in_words():
    assert interval({"mean": 1.0, "lo": 0.75, "hi": 1.25, "n": 3}) == (
        "1 (95 % interval 0.75 to 1.25, n = 3 runs)"
    )
    assert interval({"mean": 0.5, "lo": None, "hi": None, "n": 1}) == "0.5 (n = 1 run: no interval)"
    assert interval({"mean": None, "lo": None, "hi": None, "n": 0}) == "not measured"


def test_the_verdict_gives_each_link_its_number_interval_and_runs():
    fits = chain_fits(runs())
    half = T4_2 * 0.1 / math.sqrt(3)  # the three runs' ratios 0.9, 1.0, 1.1
    a = fits["a"]["all"]["across_runs"]
    assert a["mean"] == pytest.approx(1.0) and a["hi"] - a["mean"] == pytest.approx(half)
    assert fits["b"]["all"]["per_radian"]["across_runs"]["mean"] == pytest.approx(2.0)
    assert fits["b"]["all"]["log_log"]["pooled"]["slope"] == pytest.approx(1.0)
    assert fits["c"]["all*"]["across_runs"]["mean"] == pytest.approx(1.0)
    assert fits["d"]["across_runs"]["mean"] == pytest.approx(0.5)
    text = verdict_section(fits)
    assert text.startswith("## Verdict\n")
    assert f"is 1 (95 % interval {1 - half:.3g} to {1 + half:.3g}, n = 3 runs) ×" in text
    assert "move 2 (95 % interval" in text and "log-loss by 0.5 (95 % interval" in text
    # each set's first validation, where its prediction starts: 2 sets × 3 runs
    assert "(6 set-validations left out" in text
    assert "not measured" not in text
    tables = chain_section(fits, [{"runs": runs(), "values": {}, "hparams": {}, "label": "x"}])
    assert "| stages.0 | 1 [" in tables and "| shadow m = 0.3 | 1 [" in tables


def test_a_link_without_records_is_named_not_measured():
    no_drift = [
        {
            **r,
            "chain_records": [
                {k: v for k, v in x.items() if "drift" not in k} for x in r["chain_records"]
            ],
        }
        for r in runs()
    ]
    text = verdict_section(chain_fits(no_drift))
    assert "**decay → rotation** (a): the measured angle" in text
    assert "**rotation → drift** (b): not measured: " in text and "probes.shadow_bn" in text
    assert "**drift → lag** (c): the running and shadow statistics lag" in text


def test_the_angle_alone_is_any_runs_so_it_makes_no_verdict_but_its_table():
    only_angles = [
        {**r, "chain_records": [x for x in r["chain_records"] if "val_loss_recal_aug" not in x]}
        for r in runs()
    ]
    fits = chain_fits(only_angles)
    assert verdict_section(fits) == "" and verdict_section(None) == ""
    assert "| stages.0 | 1 [" in chain_section(fits, [])


def test_the_report_opens_on_its_verdict(tmp_path):
    for r in runs():
        d = tmp_path / "sweep" / r["path"]
        d.mkdir(parents=True)
        hp = {"epochs": 9, "seed": int(r["path"][1]), "model": {"bn_momentum": 0.1}}
        summary = {"status": "completed", "hparams": hp, "best_val_acc": 0.5}
        (d / "summary.json").write_text(json.dumps(summary))
        text = "".join(json.dumps(x) + "\n" for x in r["chain_records"])
        (d / "metrics.jsonl").write_text(text)
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Leaderboard") < md.index("## The chain")
    assert "measured in 3 completed runs" in md
    assert (tmp_path / "rep" / "chain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chain_figure_has_every_link_and_marks_what_the_fits_leave_out():
    points = chain_points(runs())
    assert {k: len(v) for k, v in points.items()} == {"a": 270, "b": 24, "c": 54, "d": 54}
    assert sum(kept for *_, kept in points["a"]) == 90  # the middle third
    assert sum(not kept for *_, kept in points["c"]) == 6  # each set's first validation
    assert {g for *_, g, _ in points["d"]} == {"m = 0.1 (running)", "m = 0.3"}
