#!/usr/bin/env python
"""Time what packing buys a sweep: K jobs trained as one pack (runner.sweeps.pack) against the same
K jobs one after another (each a pack of one: setup, loop, summary, as `python -m runner` runs it).
The jobs are a small lr × λ grid over the four update rules (AdamW, Adam + L2, SGDW, SGD + L2), one
seed, synthetic images, no compile: what a sweep varies, on what it shares. Aggregate images/s over
the same steps of every job, after warm-up, synchronised at both ends (timing_harness.TurnWindow),
and wall time from the first setup to the last summary. Runs without hydra/omegaconf and without the
package installed.

    python scripts/bench_pack.py                                  # CPU: 4 ResNet20v1 at batch 32
    python scripts/bench_pack.py --device cuda                    # 8 ResNet56v2 at 128, CUDA graphs
    python scripts/bench_pack.py --device cuda --jobs 8 --graphs off --steps 400
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# on a bare machine neither runner nor these scripts are installed: both come from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts.*
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runner

import torch

from runner.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainerConfig
from runner.core.models import MODELS
from runner.sweeps.pack import Job, train_pack
from scripts.bench_common import Bench, flat_header, parser, session
from scripts.timing_harness import Clock, TurnWindow

# jobs and their steps; the batch is the study's on CUDA
OWN = {
    "cpu": dict(jobs=4, steps=20, batch_size=32),
    "cuda": dict(jobs=8, steps=200, batch_size=128),
    "quick": dict(jobs=2, steps=6, batch_size=16),
}

# (preset name, algorithm, lr, wd, l2): the update rules of the studies, each at two strengths
RULES = [
    ("adamw", "adam", 1e-3, 5e-4, 0.0),
    ("adam_l2", "adam", 1e-3, 0.0, 5e-4),
    ("sgdw", "sgd", 0.05, 5e-4, 0.0),
    ("sgd_l2", "sgd", 0.05, 0.0, 5e-4),
    ("adamw", "adam", 2e-3, 1e-3, 0.0),
    ("adam_l2", "adam", 2e-3, 0.0, 1e-3),
    ("sgdw", "sgd", 0.1, 1e-3, 0.0),
    ("sgd_l2", "sgd", 0.1, 0.0, 1e-3),
]


def pack_configs(
    k: int, device: str, model: str, batch_size: int, steps: int, graphs: bool | None
) -> list:
    """K jobs of a small lr × λ grid over the four update rules, one epoch of `steps` + 1 steps each
    (the step after the window closes it), synthetic images, no compile: what a sweep varies, on
    what it shares."""
    depth, version = MODELS[model]
    data = DataConfig(n_train=(steps + 2) * batch_size, n_val=1000 if device == "cuda" else 100)
    out = []
    for n in range(k):
        name, algorithm, lr, wd, l2 = RULES[n % len(RULES)]
        trainer = TrainerConfig(
            device=device,
            max_steps=steps + 1,
            compile=False,
            cuda_graphs=graphs,
            progress=False,
            bn_recalibrate=0,
        )
        out.append(
            RunConfig(
                lr=lr * (1 + n // len(RULES)),
                wd=wd,
                l2=l2,
                epochs=1,
                batch_size=batch_size,
                seed=0,
                data=data,
                model=ModelConfig(name=model, depth=depth, version=version),
                optimizer=OptimizerConfig(name=name, algorithm=algorithm),
                trainer=trainer,
            )
        )
    return out


def timed_pack(cfgs: list, root: Path, warmup: int, steps: int, clock: Clock) -> dict:
    """Train `cfgs` as one pack into fresh folders under `root`: the seconds of steps warmup+1 ..
    steps of every job (turns: K setups, then one step of each job per round), and of the whole
    call. Unstaggered: these jobs validate only at their end, after the window, and a stagger would
    put its ramp inside the window."""
    k, jobs = len(cfgs), []
    for n, cfg in enumerate(cfgs):
        run_dir = root / f"{time.monotonic_ns()}_{n}"
        run_dir.mkdir(parents=True)
        jobs.append(Job(cfg, run_dir, name=f"#{n}"))
    window = TurnWindow(start=k + k * warmup + 1, end=k + k * steps + 1, clock=clock)
    tick = clock()
    outcomes = train_pack(jobs, around=window, stagger=False)
    wall = clock() - tick
    bad = [
        o.error or o.summary["status"]
        for o in outcomes
        if o.error or o.summary["status"] != "completed"
    ]
    if bad:
        raise RuntimeError(f"benchmark runs did not complete: {bad}")
    return {
        "window_s": window.seconds,
        "wall_s": wall,
        "run_images_per_s": [o.summary["images_per_s"] for o in outcomes],
    }


def pack_rates(b: Bench, graphs: bool | None) -> dict:
    """K jobs one after another (each a pack of one: setup, loop, summary, as `python -m runner`
    runs it), then the same K jobs as one pack (runner.sweeps.pack). Aggregate images/s = all jobs'
    images in the window / its seconds (sequential: the K windows' seconds added up), so the ratio
    is what packing buys; `wall` includes set-up, capture, validation and checkpoints. The first
    tenth of the steps (at least 2) is warm-up, untimed."""
    device, clock, s = b.device, b.clock, b.s
    k, model, batch_size, steps = s["jobs"], s["model"], s["batch_size"], s["steps"]
    warmup = max(2, steps // 10)
    cfgs = pack_configs(k, device.type, model, batch_size, steps, graphs)
    images = (steps - warmup) * batch_size  # per job, in the window
    alone = [timed_pack([cfg], b.folder, warmup, steps, clock) for cfg in cfgs]
    packed = timed_pack(cfgs, b.folder, warmup, steps, clock)
    sequential = k * images / sum(a["window_s"] for a in alone)
    row = {
        "k": k,
        "model": model,
        "batch_size": batch_size,
        "device": str(device),
        "cuda_graphs": graphs,
        "warmup_steps": warmup,
        "timed_steps": steps - warmup,
        "sequential_images_per_s": sequential,
        "pack_images_per_s": k * images / packed["window_s"],
        "sequential_wall_s": sum(a["wall_s"] for a in alone),
        "pack_wall_s": packed["wall_s"],
        "alone_images_per_s": [images / a["window_s"] for a in alone],
        "pack_run_images_per_s": packed["run_images_per_s"],
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
        "jobs": [{"optimizer": c.optimizer.name, "lr": c.lr, "wd": c.wd, "l2": c.l2} for c in cfgs],
    }
    row["ratio"] = row["pack_images_per_s"] / sequential
    row["wall_ratio"] = row["sequential_wall_s"] / row["pack_wall_s"]
    print(
        f"pack  {model} batch {batch_size} K={k}: sequential {sequential:,.0f} img/s, pack "
        f"{row['pack_images_per_s']:,.0f} img/s: {row['ratio']:.2f}x; wall "
        f"{row['sequential_wall_s']:.1f} s vs {row['pack_wall_s']:.1f} s "
        f"({row['wall_ratio']:.2f}x)",
        flush=True,
    )
    return row


def parse_args(argv=None):
    p = parser(__doc__, "bench_pack.json", data=False)
    p.add_argument("--jobs", type=int, help="K, the jobs of the pack (default 4 cpu, 8 cuda)")
    p.add_argument("--batch-size", type=int, help="default 32 on cpu, 128 on cuda")
    p.add_argument("--steps", type=int, help="steps of each job (default 20 cpu, 200 cuda)")
    p.add_argument(
        "--graphs",
        choices=("auto", "on", "off"),
        default="auto",
        help="trainer.cuda_graphs of the jobs (auto: on for cuda)",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    graphs = {"auto": None, "on": True, "off": False}[args.graphs]
    positive = ("jobs", "steps", "batch_size")
    # the jobs' settings are pack_configs' own: of the common ones only the model
    with session(args, OWN, positive, common=("model",), runs=None) as (b, results):
        results["pack"] = row = pack_rates(b, graphs)
        keep = ("k", "ratio", "pack_images_per_s", "sequential_images_per_s", "wall_ratio")
        results["summary"] = {**flat_header(results), "pack": {k: row[k] for k in keep}}
    return results


if __name__ == "__main__":
    main()
