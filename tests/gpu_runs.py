"""Tiny runs for the GPU tests (tests/test_gpu.py, tests/test_gpu_preflight.py): RunConfig built
directly, the Run kept to look into afterwards, counts read from torch."""

import math
from pathlib import Path

import torch

from runner.config import DataConfig, ModelConfig, RunConfig, TrainerConfig
from runner.engine import build, loop
from runner.engine.interrupts import StopRequests
from runner.engine.records import read_metrics
from runner.engine.run import Run
from runner.engine.summary import finish


def tiny_config(
    device: torch.device, epochs: int = 2, depth: int = 20, batch_size: int = 64, **trainer
) -> RunConfig:
    """ResNet-`depth` v1 on 512 synthetic images (8 steps an epoch at batch 64), the trainer's
    defaults on `device` (off CUDA: eager)."""
    tr = dict(device=device.type, progress=False, **trainer)
    if device.type != "cuda":
        tr.setdefault("compile", False)
        tr["cuda_graphs"] = False
    return RunConfig(
        lr=1e-3,
        wd=5e-4,
        epochs=epochs,
        batch_size=batch_size,
        seed=0,
        model=ModelConfig(name=f"resnet{depth}v1", depth=depth, version=1, bn_momentum=0.1),
        data=DataConfig(n_train=512, n_val=200),
        trainer=TrainerConfig(**tr),
    )


@build.torch_settings_kept()  # as engine.train.train: trainer.deterministic ends with the run
def drain(cfg: RunConfig, folder: Path, after_step=None, job_num: int = 0) -> Run:
    """runner.engine.train.train's own parts (setup, loop, summary), keeping the Run;
    `after_step(run)` is called after every step (its validation, if one was due, included)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = build.setup(cfg, folder, job_num=job_num)
    try:
        for _ in loop.loop(run, StopRequests()):
            if after_step is not None:
                after_step(run)
    finally:
        finish(run)
    return run


def train_losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "train_loss" in r]


def all_finite(values) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def compiled_frames() -> int | None:
    """How many frames torch.compile has compiled in this process (None if torch no longer counts
    them)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a private counter: its absence must not fail a check
        return None
