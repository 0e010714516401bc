"""scripts/cli_vs_tutorial.py: the CLI against the tutorial loop in interleaved repeats, and what
it reports. No timing thresholds: timings belong to the benchmarks."""

import json
import sys
from pathlib import Path

import pytest

from scripts import cli_vs_tutorial

ROOT = Path(__file__).resolve().parents[1]


def test_the_comparison_alternates_the_order_and_reports_the_ratio(monkeypatch, tmp_path):
    cvt = cli_vs_tutorial
    calls = []
    rates = iter([100.0, 50.0, 80.0, 40.0, 90.0, 30.0])  # cli, tut, tut, cli, cli, tut

    def fake(which):
        def run(*args):
            calls.append(which)
            out = {"images_per_s": next(rates), "images_per_s_overall": 1.0, "minor_faults": 1}
            return {**out, "env": {"malloc": "set"}} if which == "cli" else out

        return run

    monkeypatch.setattr(cvt, "cli", fake("cli"))
    monkeypatch.setattr(cvt, "tutorial", fake("tutorial"))
    out = cvt.main(["--repeats", "3", "--out", str(tmp_path / "o.json")])
    assert calls == ["cli", "tutorial", "tutorial", "cli", "cli", "tutorial"]
    assert [r["ratio"] for r in out["repeats"]] == [2.0, 0.5, 3.0]
    assert out["ratio"] == {"median": 2.0, "min": 0.5, "max": 3.0}
    assert out["cli_images_per_s"]["median"] == 90.0 and out["env"]["malloc"] == "set"
    assert json.loads((tmp_path / "o.json").read_text())["ratio"]["median"] == 2.0


@pytest.mark.slow
def test_the_comparison_reads_the_clis_own_summary(tmp_path):
    import subprocess

    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "cli_vs_tutorial.py"),
            *("--model", "resnet20v1", "--batch-size", "16", "--n-train", "48"),
            *("--repeats", "1", "--workers", "0", "--out", str(tmp_path / "o.json")),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "o.json").read_text())
    (pair,) = out["repeats"]
    assert pair["cli"]["images_per_s"] > 0 and pair["tutorial"]["images_per_s"] > 0
    assert pair["cli"]["minor_faults"] > 0 and pair["tutorial"]["minor_faults"] > 0
    assert out["env"]["malloc"].startswith("glibc") or "not glibc" in out["env"]["malloc"]
    assert "median of 1" in r.stdout
