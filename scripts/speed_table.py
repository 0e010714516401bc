#!/usr/bin/env python
"""The README's Speed table, as markdown, from the JSON files of scripts/bench.py and scripts/gpu_check.py.

    python scripts/speed_table.py gpu_out/bench.json gpu_out/gpu_check.json > gpu_out/speed_table.md

Either file may be missing or cut short (a stage that ran out of time): its rows are left out. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LOOP_ROWS = {  # bench.py's execution paths, as the README names them
    "eager": "runner, eager (`trainer.compile=false trainer.cuda_graphs=false`)",
    "graphs": "runner, CUDA graphs without compile (`trainer.compile=false`)",
    "compile": "runner, compile without CUDA graphs (`trainer.cuda_graphs=false`)",
    "compile+graphs": "runner, compile + CUDA graphs (the CUDA default)",
}


def load(path: str | None) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return {}


def rate(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f} img/s"


def provenance(bench: dict, check: dict) -> str:
    env = bench.get("env") or check.get("env") or {}
    if not env:
        return "(no results)"
    code = env.get("code") or {}
    commit = (code.get("commit") or "unknown")[:7] + (" (dirty)" if code.get("dirty") else "")
    data = (bench.get("settings") or {}).get("data", "–")
    return (
        f"{env.get('device_name')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"Python {env.get('python')}, {env.get('cpu_count')} CPUs, commit {commit}; bench data: {data}"
    )


def loop_rows(bench: dict, sizes: list[int]) -> list[list[str]]:
    by = {(r["path"], r["batch_size"]): r for r in bench.get("loop", [])}
    tutorial = {r["batch_size"]: r["tutorial"]["images_per_s"] for r in bench.get("loop", [])}
    rows = [["tutorial DataLoader loop (reference)"] + [rate(tutorial.get(b)) for b in sizes]] if tutorial else []
    for path, label in LOOP_ROWS.items():
        if not any(p == path for p, _ in by):
            continue
        cells = []
        for b in sizes:
            r = by.get((path, b))
            cells.append(
                "–"
                if r is None
                else f"{rate(r['loop']['images_per_s'])} ({r['ratio']:.2f}×), "
                f"{r['epoch_s_est']:.2f} s/epoch, overhead "
                f"{100 * r['overhead']['share_raw']:.1f} %"
            )
        rows.append([label] + cells)
    return rows


def run_rows(check: dict, sizes: list[int]) -> list[list[str]]:
    by = {(r.get("path"), r.get("batch_size")): r for r in check.get("runs", [])}
    rows = []
    labels = (
        ("default", "`runner.engine.loop.train`, default settings"),
        ("eager", "`runner.engine.loop.train`, eager"),
    )
    for path, label in labels:
        if not any(p == path for p, _ in by):
            continue
        cells = []
        for b in sizes:
            r = by.get((path, b))
            if r is None or "error" in r or not r.get("images_per_s"):
                cells.append("–" if r is None else "failed")
                continue
            epochs = ", ".join(f"{t:.2f}" for t in r["epoch_train_s"])
            cells.append(
                f"{rate(r['images_per_s'])} steady; epochs {epochs} s; "
                f"startup {_n(r.get('startup_s'), '.1f')} s, stall {_n(r.get('stall_s'), '.2f')} s; "
                f"validation {_s(r.get('val_s'))} (first {_s(r.get('val_first_s'))})"
            )
        rows.append([label] + cells)
    return rows


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f} s"


def _n(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def single_rows(bench: dict, check: dict, n: int) -> list[list[str]]:
    """Rows that do not depend on the training batch: evaluation, recalibration, op counts."""
    rows = []
    ev = bench.get("evaluation", [])
    if ev:
        vals = "; ".join(f"{e['path']} {e['validation']['est_10000_images_s']:.3f} s" for e in ev)
        label = "validation, 10,000 images (`evaluate`, trainer's loader and eval forward)"
        rows.append([label, vals] + [""] * (n - 1))
        recal = "; ".join(f"{e['path']} {e['recalibration']['seconds']:.3f} s" for e in ev if "recalibration" in e)
        if recal:
            images = next(e["recalibration"]["images"] for e in ev if "recalibration" in e)
            rows.append([f"BatchNorm recalibration, {images:,} images", recal] + [""] * (n - 1))
    c = check.get("evaluation") or {}
    if "recalibration_s" in c:
        rows.append(
            [
                f"`train` run's Run: recalibration ({c['recalibration_images']:,} images) / one validation pass",
                f"{c['recalibration_s']:.3f} s / {c['validation_pass_s']:.3f} s",
            ]
            + [""] * (n - 1)
        )
    ops = bench.get("op_counts") or {}
    if "runner_per_step" in ops:
        rows.append(
            [
                f"device work per step, eager runner vs tutorial ({ops['unit']})",
                f"{ops['runner_per_step']:g} vs {ops['tutorial_per_step']:g} (+{ops['log_step_extra']:g} per flush)",
            ]
            + [""] * (n - 1)
        )
    return rows


def table(bench: dict, check: dict) -> str:
    sizes = sorted(
        {r["batch_size"] for r in bench.get("loop", [])}
        | {r["batch_size"] for r in check.get("runs", []) if "batch_size" in r}
    )
    sizes = sizes or [128]
    rows = loop_rows(bench, sizes) + run_rows(check, sizes) + single_rows(bench, check, len(sizes))
    model = (bench.get("settings") or {}).get("model", "resnet56v2")
    lines = [
        f"Measured on {provenance(bench, check)}; {model}.",
        "",
        "| what | " + " | ".join(f"batch {b}" for b in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    failed = check.get("failed")
    if failed:
        lines += ["", f"gpu_check failures: {', '.join(map(str, failed))}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    files = {"bench": None, "check": None}
    for a in args:
        files["check" if "gpu_check" in Path(a).name else "bench"] = a
    sys.stdout.write(table(load(files["bench"]), load(files["check"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
