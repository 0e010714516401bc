#!/usr/bin/env python
"""Time whole training runs, end to end: setup → loop → summary (engine.train.train's parts) for
--epochs epochs, validating every epoch as the defaults do, per batch size and execution path.
Reads what the trainer itself records: summary.json's images_per_s, startup_s and its parts,
stall_s, validation times, and the epoch records of metrics.jsonl.

The runs share one loaded data set (engine.build.setup's data_cache): loading it is not timed.
Off CUDA the graphs paths are left out (trainer.cuda_graphs=true is refused there). Runs without
hydra/omegaconf and without the package installed.

    python scripts/bench_e2e.py                  # CPU: ResNet20v1, batch 32, eager, 2 epochs
    python scripts/bench_e2e.py --device cuda --paths graphs,compile+graphs --batch-sizes 128
"""

from __future__ import annotations

import sys
from pathlib import Path

# on a bare machine neither runner nor these scripts are installed: both come from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts.*
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runner

from runner.config import RunConfig
from runner.engine import build
from runner.engine.interrupts import StopRequests
from runner.engine.loop import loop
from runner.engine.records import read_metrics
from runner.engine.summary import finish
from scripts.bench_common import EPOCH_IMAGES, PATHS, Bench, flat_header, parser, paths_arg, session

OWN = {"cpu": dict(epochs=2), "cuda": dict(epochs=2), "quick": dict(epochs=1)}
# what each row keeps of the run's summary.json
E2E_KEYS = (
    "status",
    "images_per_s",
    "images_per_s_overall",
    "train_time_s",
    "startup_s",
    "startup",
    "stall_s",
    "first_step_s",
    "val_time_s",
    "val_first_s",
    "val_s",
    "wall_time_s",
    "final_val_acc",
)


def end_to_end(b: Bench, batch_size: int, path: str) -> dict | None:
    """A whole run of b.s['epochs'] epochs: its summary.json and the epoch records of its
    metrics.jsonl; None off CUDA for a graphs path."""
    if PATHS[path][1] and b.device.type != "cuda":
        return None
    folder = b.subfolder(f"e2e_{path}_b{batch_size}")
    summary = train(b, b.config(batch_size, path, epochs=b.s["epochs"]), folder)
    epochs = [r for r in read_metrics(folder / "metrics.jsonl") if "epoch_train_s" in r]
    row = {
        "batch_size": batch_size,
        "path": path,
        "execution": summary.get("path"),
        **{k: summary.get(k) for k in E2E_KEYS},
        "epochs": [{k: r[k] for k in ("epoch", "epoch_train_s", "epoch_images")} for r in epochs],
    }
    rate = row["images_per_s"]
    row["epoch_s_est"] = EPOCH_IMAGES / rate if rate else None
    print(
        f"end to end batch {batch_size:4d} {path:15s}: {_f(rate, '.1f')} img/s steady, "
        f"{_f(row['images_per_s_overall'], '.1f')} overall; epochs "
        f"{[round(e['epoch_train_s'], 2) for e in epochs]} s; startup "
        f"{_f(row['startup_s'], '.2f')} s, stall {_f(row['stall_s'], '.2f')} s, validation "
        f"{_f(row['val_s'], '.3f')} s (first {_f(row['val_first_s'], '.2f')} s)",
        flush=True,
    )
    return row


def train(b: Bench, cfg: RunConfig, folder: Path) -> dict:
    """runner.engine.train.train's own parts (setup, loop, summary) on the bench's loaded data; the
    summary."""
    run = build.setup(cfg, folder, data_cache=b.cache)
    try:
        for _ in loop(run, StopRequests()):
            pass
    finally:
        summary = finish(run)
    return summary


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def parse_args(argv=None):
    p = parser(__doc__, "bench_e2e.json")
    p.add_argument("--batch-sizes", help="comma-separated; default: 32 on cpu, 128,64 on cuda")
    paths_arg(p)
    p.add_argument("--epochs", type=int, help="epochs of each run (default 2, 1 with --quick)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    with session(parse_args(argv), OWN, positive=("epochs",)) as (b, results):
        s, rows = b.s, []
        batches, paths = s["batch_sizes"], s["paths"]
        print(f"bench: {s['epochs']} epochs of {s['model']}, batch {batches}, paths {paths}")
        results["end_to_end"] = rows
        for bs in s["batch_sizes"]:
            for path in s["paths"]:
                row = end_to_end(b, bs, path)
                if row is not None:
                    rows.append(row)
                    b.save(results)
        e2e = {}  # the flat figure the README's tables read, by path and batch size
        for r in rows:
            e2e.setdefault(r["path"], {})[str(r["batch_size"])] = r["images_per_s"]
        results["summary"] = {**flat_header(results), "end_to_end_images_per_s": e2e}
    return results


if __name__ == "__main__":
    main()
