#!/usr/bin/env python
"""On a CUDA machine: check that the fast paths train exactly like the eager loop, then time real runs of
runner.engine.loop.train. Every check runs even when an earlier one fails; the exit status is 1 if any failed.
Needs torch, torchvision, tensorboard and tqdm only (no hydra): it imports runner from ../src.

    python scripts/gpu_check.py --out gpu_check.json                               # the checks (about a minute)
    python scripts/gpu_check.py --data-root /tmp/cifar10-jpg --out gpu_check.json  # the checks, then timed runs
    python scripts/gpu_check.py --no-checks --data-root /tmp/cifar10-jpg           # timed runs only
    python scripts/gpu_check.py --device cpu --quick --data-root synthetic         # the plumbing, off a GPU

Checks (tests/test_gpu.py runs the same functions under `pytest -m gpu`):
  step equivalence  each optimizer preset (adamw, adam_l2, sgdw, sgd_l2) with L2, decoupled decay and both, in
                    float64: the eager `train_step` (fused optimizer, as the eager trainer builds it) against
                    `GraphedStep(capture=True)` (capturable, as the graphed trainer builds it), on batches of two
                    shapes (two graphs, each replayed): every loss, d_t and ‖g‖, weight, BatchNorm buffer and
                    optimizer moment must be equal (torch.equal), cuDNN deterministic.
  recalibration     a short captured run whose validations recalibrate BatchNorm every few steps trains bit for bit
                    like the same run validating once per epoch without recalibration.
  eval forward      the captured validation forward (GraphedForward) gives exactly the eager forward's logits.
  default path      compile + CUDA graphs (the CUDA default): after the first epoch and its validation nothing is
                    compiled or recorded again (one training graph, one eval graph, no new compiled frame).
Off CUDA (--device cpu) the same checks run with step and forward uncaptured, which tests only the plumbing.

Timed runs (--data-root DIR, or `synthetic` for generated images): the model at each --batch-sizes with the default
settings (compile + CUDA graphs on CUDA) for --epochs epochs and with the eager path (trainer.compile=false
trainer.cuda_graphs=false) for --eager-epochs, each through runner.engine.loop.train: steady images/s, epoch times,
startup_s and its parts, stall_s, validation time; then BatchNorm recalibration and one validation pass timed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (trainer.deterministic needs it)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from runner.config import DataConfig, ModelConfig, RunConfig, TrainerConfig  # noqa: E402  (no omegaconf)
from runner.core import data as rdata  # noqa: E402
from runner.core.evaluation import evaluate, recalibrated_bn  # noqa: E402
from runner.core.models import MODELS, build_resnet  # noqa: E402
from runner.core.schedules import warm_restarts  # noqa: E402
from runner.core.step_plan import step_tables  # noqa: E402
from runner.core.update_rule import Optimizer, decoupled_rate  # noqa: E402
from runner.engine import build as rrun  # noqa: E402
from runner.engine import loop as rtrain  # noqa: E402
from runner.engine import step as rstep  # noqa: E402
from runner.engine import summary as rsummary  # noqa: E402
from runner.engine.interrupts import StopRequests  # noqa: E402
from runner.engine.records import read_metrics  # noqa: E402
from runner.engine.step import GraphedForward, GraphedStep  # noqa: E402

# configs/optimizer/*.yaml's optimizer sections, copied because this script runs without hydra;
# tests/test_gpu.py checks the copy against the files
PRESETS = {
    "adamw": dict(algorithm="adam", wd_scaling="schedule", betas=(0.9, 0.999), eps=1e-8),
    "adam_l2": dict(algorithm="adam", wd_scaling="schedule", betas=(0.9, 0.999), eps=1e-8),
    "sgdw": dict(algorithm="sgd", wd_scaling="schedule", momentum=0.9, nesterov=False),
    "sgd_l2": dict(algorithm="sgd", wd_scaling="schedule", momentum=0.9, nesterov=False),
}
REGULARIZATION = {"l2": (1e-3, 0.0), "decoupled": (0.0, 0.05), "both": (1e-3, 0.05)}  # (λ₂, λ), as tests/test_graphs
LR, SPE = 3e-3, 5
SHAPES = ([16] * 4 + [8]) * 5  # 8 = an epoch's last, smaller batch: 3 warm-ups, its capture, then a replay
QUICK_SHAPES = [16, 16, 8, 16, 8]
EPOCH_IMAGES = 50_000


# ---------------------------------------------------------------- the checks


def step_equivalence(device: torch.device, preset: str, reg: str, quick: bool = False) -> dict:
    """Eager train_step against GraphedStep on the same batches, float64; exact equality everywhere. Exact, not close:
    both paths take lr_t from Optimizer.lr_value (rounded to float32, what the fused kernels read) and 1 − d_t from
    keep_value, and run the same kernels on the same inputs (cuDNN deterministic), so any difference is a bug."""
    cuda = device.type == "cuda"
    l2, wd = REGULARIZATION[reg]
    kw = PRESETS[preset]
    schedule, _ = warm_restarts(T_0=1.0, T_mult=2.0, eta_min=0.05)  # moves every step, restarts at step 5
    decay = decoupled_rate(wd, kw["wd_scaling"], LR)
    opt_kw = {k: v for k, v in kw.items() if k != "wd_scaling"}
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(b, 3, 32, 32, generator=gen, dtype=torch.float64).to(device),
            torch.randint(0, 10, (b,), generator=gen).to(device),
        )
        for b in (QUICK_SHAPES if quick else SHAPES)
    ]
    depth = 8 if quick else 20

    def make(capturable: bool):
        torch.manual_seed(0)
        model = build_resnet(depth, 1, 10, bn_momentum=0.1).double().to(device)  # float64: nothing to round away
        return model, Optimizer(model, lr=LR, l2=l2, wd=wd, decay=decay, fused=True, capturable=capturable, **opt_kw)

    with _cudnn(deterministic=True, benchmark=False):
        m1, o1 = make(capturable=False)  # what the eager trainer builds
        eager = []
        for k, (x, y) in enumerate(batches):
            t = k / SPE
            loss, d, gn = rstep.train_step(m1, o1, x, y, t, schedule(t), nullcontext(), want_grad_norm=True)
            eager.append((loss.item(), d, gn.item()))
        m2, o2 = make(capturable=cuda)  # what the graphed trainer builds
        lrs, ds = step_tables(schedule, lambda t, e: decay(t, e) if wd else 0.0, LR, SPE, len(batches))
        g = GraphedStep(m2, o2, nullcontext(), lrs, ds, capture=cuda)
        graphed = []
        for k, (x, y) in enumerate(batches):
            loss, _, gn, _ = g(x, y, k)
            graphed.append((loss.item(), ds[k], gn.item()))
    differ = [k for k, (a, b) in enumerate(zip(eager, graphed)) if a != b]
    weights = _differences(m1.state_dict(), m2.state_dict())
    moments = _differences(_moments(o1), _moments(o2))
    want_graphs = 2 if cuda else 0
    out = {
        "check": "step equivalence",
        "preset": preset,
        "regularization": reg,
        "steps": len(batches),
        "graphs": len(g.graphs),
        "counter": g.counter.item(),
        "steps_that_differ": differ[:5],
        "weights_that_differ": weights,
        "moments_that_differ": moments,
        "max_loss_diff": max(abs(a[0] - b[0]) for a, b in zip(eager, graphed)),
        "trained": eager[0][0] != eager[-1][0],
    }
    out["ok"] = (
        not differ
        and not weights
        and not moments
        and out["graphs"] == want_graphs
        and out["counter"] == len(batches)
        and out["trained"]
    )
    return out


def _moments(opt: Optimizer) -> dict:
    """Every optimizer state tensor (Adam's step, m, v; SGD's momentum buffer), named by parameter index."""
    return {f"{i}.{k}": v for i, p in enumerate(opt.params) for k, v in opt.inner.state[p].items()}


def _differences(a: dict, b: dict) -> dict:
    """{name: max |difference|} of the tensors that are not equal (at most 5)."""
    out = {}
    for k, v in a.items():
        if not torch.equal(v, b[k]):
            out[k] = (v.double() - b[k].double()).abs().max().item()
            if len(out) == 5:
                break
    return out


class _cudnn:
    """cuDNN's deterministic/benchmark flags for a block, then back as they were."""

    def __init__(self, **flags):
        self.flags = flags

    def __enter__(self):
        self.saved = {k: getattr(torch.backends.cudnn, k) for k in self.flags}
        for k, v in self.flags.items():
            setattr(torch.backends.cudnn, k, v)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(torch.backends.cudnn, k, v)
        return False


def tiny_config(device: torch.device, epochs: int = 2, **trainer) -> RunConfig:
    """ResNet20v1 on 512 synthetic images, batch 64 (8 steps an epoch), the trainer's defaults on `device`."""
    tr = dict(device=device.type, progress=False, **trainer)
    if device.type != "cuda":
        tr.setdefault("compile", False)
        tr["cuda_graphs"] = False
    return RunConfig(
        lr=1e-3,
        wd=5e-4,
        epochs=epochs,
        batch_size=64,
        seed=0,
        model=ModelConfig(name="resnet20v1", depth=20, version=1, bn_momentum=0.1),
        data=DataConfig(name="synthetic", n_train=512, n_val=200),
        trainer=TrainerConfig(**tr),
    )


def drain(cfg: RunConfig, folder: Path, after_step=None) -> rrun.Run:
    """runner.engine.loop.train's own pieces (setup, loop, finish), keeping the Run to look into afterwards;
    `after_step(run)` is called after every step (its validation, if one was due, included)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = rrun.setup(cfg, folder)
    try:
        for _ in rtrain.loop(run, StopRequests()):
            if after_step is not None:
                after_step(run)
    finally:
        rsummary.finish(run)
    return run


def recalibration_identity(device: torch.device, folder: Path) -> dict:
    """Validations that recalibrate BatchNorm every 3 steps leave training bit-identical to validating once per
    epoch without recalibration: same step records, weights, BatchNorm buffers and optimizer state, exactly (two runs
    of the same deterministic computation; recalibration restores what it changes)."""
    # deterministic: cuDNN picks the same kernels in both runs; no compile: the check is about the captured step
    det = dict(deterministic=True, bn_recalibrate=256, compile=False)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        a = drain(tiny_config(device, val_every=3, **det), folder / "recal_every_3")
        b = drain(tiny_config(device, **{**det, "bn_recalibrate": 0}), folder / "no_recal")
    finally:  # setup() turned them on for the whole process
        torch.use_deterministic_algorithms(was)
    # a flush adds the weight norms to its last record, and the two runs flush at different steps: compare the
    # fields of every step, and the norms where both runs have them
    train_a, train_b = ([r for r in read_metrics(r.recorder.path) if "train_loss" in r] for r in (a, b))
    core = [[(r["step"], r["train_loss"], r["lr"], r["decay"]) for r in t] for t in (train_a, train_b)]
    norms_b = {r["step"]: r for r in train_b if "weight_norm" in r}
    both = [(r, norms_b[r["step"]]) for r in train_a if "weight_norm" in r and r["step"] in norms_b]
    vals = [r for r in read_metrics(a.recorder.path) if "val_loss_recal" in r]
    weights = _differences(a.model.state_dict(), b.model.state_dict())
    moments = _differences(_moments(a.opt), _moments(b.opt))
    out = {
        "check": "recalibration",
        "execution": a.path,
        "steps": a.state.step,
        "recalibrated_validations": len(vals),
        "records_equal": core[0] == core[1] and len(core[0]) == a.state.step,
        "norms_equal": bool(both) and all(x["weight_norm"] == y["weight_norm"] for x, y in both),
        "weights_that_differ": weights,
        "moments_that_differ": moments,
    }
    out["ok"] = (
        out["records_equal"]
        and out["norms_equal"]
        and not weights
        and not moments
        and len(vals) >= 5
        and a.state.step == 16
    )
    return out


def eval_forward_equality(device: torch.device) -> dict:
    """GraphedForward (captured on CUDA after 2 eager calls) against the eager forward on the trainer's padded
    validation batches, bf16 and channels_last as the trainer runs them: logits and evaluate() exactly equal (the same
    kernels on the same inputs; cuDNN benchmark caches its choice per shape, so both use one)."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_resnet(20, 1, 10).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if cuda else nullcontext()
    splits = rdata.make_synthetic(n_train=20, n_val=450, seed=1)
    mean, std = rdata.channel_stats(splits.train_x)
    loader = rdata.DeviceLoader(
        splits.val_x,
        splits.val_y,
        100,
        device=device,
        shuffle=False,
        pad_last=True,
        mean=mean,
        std=std,
        channels_last=cuda,
    )
    captured, eager = GraphedForward(model, autocast, capture=cuda), GraphedForward(model, autocast, capture=False)
    unequal = 0
    with _cudnn(benchmark=True):  # as the trainer runs
        for _ in range(2):
            for x, _y in loader.epoch(0):
                unequal += not torch.equal(eager(x).clone(), captured(x).clone())  # a replay rewrites its output
        ev_eager = torch.stack(evaluate(model, eager, loader)).tolist()
        model.eval()
        ev_captured = torch.stack(evaluate(model, captured, loader)).tolist()
    out = {
        "check": "eval forward",
        "batches": 2 * len(loader),
        "unequal_batches": unequal,
        "captured": captured.graph is not None,
        "evaluate_eager": ev_eager,
        "evaluate_captured": ev_captured,
    }
    out["ok"] = unequal == 0 and ev_eager == ev_captured and out["captured"] == cuda
    return out


def compiled_frames() -> int | None:
    """How many frames torch.compile has compiled in this process (None if torch no longer counts them)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a private counter: its absence must not fail the check
        return None


def default_path(device: torch.device, folder: Path) -> dict:
    """The default settings (compile + CUDA graphs on CUDA, eager elsewhere) on a 3-epoch run with a validation (and
    a recalibration) each epoch: after the first epoch and its validation, nothing is compiled or recorded again:
    one training graph, the eval forward captured once (at its third call), and torch.compile's count of compiled
    frames unchanged. Exact counts, no timing: the epoch-end stall of docs/results/2026-11-28-h200 was a recompile and
    recapture of a new batch shape, which these counts see."""
    seen = {}

    def after_step(run):
        if run.state.step == run.steps_per_epoch:  # epoch 1 trained and validated (eval forward compiled)
            seen.update(frames=compiled_frames(), graphs=len(run.graphed.graphs) if run.graphed is not None else 0)

    run = drain(tiny_config(device, epochs=3, bn_recalibrate=256), folder / "default_path", after_step)
    s = json.loads((run.run_dir / "summary.json").read_text())
    epochs = [r for r in read_metrics(run.recorder.path) if "epoch_train_s" in r]
    cuda = device.type == "cuda"
    out = {
        "check": "default path",
        "execution": run.path,
        "status": s["status"],
        "graphs": len(run.graphed.graphs) if run.graphed is not None else 0,
        "graphs_after_epoch_1": seen.get("graphs"),
        "shapes_seen": len(run.graphed.seen) if run.graphed else 0,
        "eval_captured": run.eval_forward.graph is not None,
        "compiled_frames_after_epoch_1": seen.get("frames"),
        "compiled_frames": compiled_frames(),
        "images_per_s": s["images_per_s"],
        "startup_s": s["startup_s"],
        "stall_s": s["stall_s"],
        "epoch_train_s": [r["epoch_train_s"] for r in epochs],
    }
    out["ok"] = (
        s["status"] == "completed"
        and len(epochs) == 3
        and out["graphs"] == out["graphs_after_epoch_1"] == (1 if cuda else 0)
        and out["shapes_seen"] == (1 if cuda else 0)
        and out["eval_captured"] == cuda
        and out["compiled_frames"] == out["compiled_frames_after_epoch_1"]
    )
    return out


def all_checks(device: torch.device, folder: Path, quick: bool = False) -> list[dict]:
    """Every check, each run even when one before it failed or raised (a raise is a failed check)."""
    checks = [
        (f"step equivalence {p} {r}", lambda p=p, r=r: step_equivalence(device, p, r, quick))
        for p in PRESETS
        for r in REGULARIZATION
    ]
    checks += [
        ("recalibration", lambda: recalibration_identity(device, folder)),
        ("eval forward", lambda: eval_forward_equality(device)),
        ("default path", lambda: default_path(device, folder)),
    ]
    results = []
    for name, fn in checks:
        tick = time.perf_counter()
        try:
            r = fn()
        except Exception:  # a crash is a failed check; the others still run
            r = {"check": name, "ok": False, "error": traceback.format_exc(limit=8)}
        r["seconds"] = time.perf_counter() - tick
        results.append(r)
        brief = {k: v for k, v in r.items() if k not in ("check", "ok", "error")}
        print(f"gpu_check: {'ok    ' if r['ok'] else 'FAILED'} {name} {json.dumps(brief, default=str)}", flush=True)
        if "error" in r:
            print(r["error"], flush=True)
    return results


# ---------------------------------------------------------------- timed runs


def run_data(root: str, quick: bool) -> DataConfig:
    if root == "synthetic":
        return DataConfig(name="synthetic", n_train=512 if quick else EPOCH_IMAGES, n_val=100 if quick else 10_000)
    name = "cifar10" if (Path(root) / rdata.CIFAR10_FOLDER).is_dir() else "image_folder"
    return DataConfig(name=name, root=root, download=False)


def timed_run(device, data: DataConfig, model: str, batch_size: int, path: str, epochs: int, folder: Path) -> dict:
    """One runner.engine.loop.train run: the default settings, or the eager path; its summary's timing figures."""
    compile_, graphs = (None, None) if path == "default" else (False, False)
    depth, version = MODELS[model]
    cfg = RunConfig(
        lr=1e-3,
        wd=5e-4,
        epochs=epochs,
        batch_size=batch_size,
        seed=0,
        model=ModelConfig(name=model, depth=depth, version=version),
        data=data,
        trainer=TrainerConfig(device=device.type, compile=compile_, cuda_graphs=graphs, progress=False),
    )
    folder.mkdir(parents=True)
    s = rtrain.train(cfg, folder)
    epoch_records = [r for r in read_metrics(folder / "metrics.jsonl") if "epoch_train_s" in r]
    row = {
        "batch_size": batch_size,
        "path": path,
        "execution": s.get("path"),
        "model": model,
        "status": s["status"],
        "images_per_s": s["images_per_s"],
        "images_per_s_overall": s["images_per_s_overall"],
        "epoch_s_est": EPOCH_IMAGES / s["images_per_s"] if s["images_per_s"] else None,
        "epoch_train_s": [r["epoch_train_s"] for r in epoch_records],
        "train_time_s": s["train_time_s"],
        "startup_s": s["startup_s"],
        "startup": s["startup"],
        "stall_s": s["stall_s"],
        "val_first_s": s["val_first_s"],
        "val_s": s["val_s"],
        "val_time_s": s["val_time_s"],
        "wall_time_s": s["wall_time_s"],
        "final_val_acc": s["final_val_acc"],
        "device": s["device"],
    }
    st = row["startup"]
    print(
        f"gpu_check: run {model} batch {batch_size} {path:7s}: {_f(row['images_per_s'], '.0f')} img/s steady "
        f"({_f(row['epoch_s_est'], '.2f')} s per 50k epoch), epochs {[round(t, 2) for t in row['epoch_train_s']]} s, "
        f"startup {_f(row['startup_s'], '.1f')} s (first step {_f(st.get('first_step_s'), '.1f')}, compile "
        f"{_f(st.get('compile_s'), '.1f')}, capture {_f(st.get('capture_s'), '.2f')}, warm-up "
        f"{_f(st.get('warmup_s'), '.2f')}, eval capture {_f(st.get('eval_capture_s'), '.2f')}), stall "
        f"{_f(row['stall_s'], '.2f')} s, validation {_f(row['val_s'], '.3f')} s "
        f"(first {_f(row['val_first_s'], '.2f')} s), val acc {_f(row['final_val_acc'], '.4f')}",
        flush=True,
    )
    return row


def evaluation_times(device, data: DataConfig, model: str, folder: Path, repeats: int = 5) -> dict:
    """Seconds of one BatchNorm recalibration (trainer.bn_recalibrate images) and one validation pass (running
    statistics) on a Run with the default settings, after one untimed call of each (compile, capture)."""
    depth, version = MODELS[model]
    cfg = RunConfig(
        epochs=1,
        batch_size=128,
        model=ModelConfig(name=model, depth=depth, version=version),
        data=data,
        trainer=TrainerConfig(
            device=device.type,
            progress=False,
            **({} if device.type == "cuda" else dict(compile=False, cuda_graphs=False)),
        ),
    )
    folder.mkdir(parents=True)
    run = rrun.setup(cfg, folder)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> list[float]:
        times = []
        for _ in range(repeats + 1):
            sync()
            tick = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - tick)
        return times

    def recal():
        with recalibrated_bn(run.model, run.recal_images, run.autocast):
            pass

    r, v = timed(recal), timed(lambda: torch.stack(evaluate(run.model, run.eval_forward, run.evals["val"])).tolist())
    if run.recorder.tb is not None:
        run.recorder.tb.close()
    run.recorder.close()
    out = {
        "execution": run.path,
        "recalibration_images": len(run.recal_images),
        "recalibration_s": statistics.median(r[1:]),
        "recalibration_first_s": r[0],
        "val_images": len(run.evals["val"].y),
        "validation_pass_s": statistics.median(v[1:]),
        "validation_first_s": v[0],
    }
    print(
        f"gpu_check: BatchNorm recalibration over {out['recalibration_images']} images "
        f"{out['recalibration_s']:.4f} s (first {r[0]:.2f} s); one validation pass over {out['val_images']} images "
        f"{out['validation_pass_s']:.4f} s (first {v[0]:.2f} s)",
        flush=True,
    )
    return out


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the same checks uncaptured")
    p.add_argument("--checks", action=argparse.BooleanOptionalAction, default=True, help="run the checks (default)")
    p.add_argument(
        "--data-root",
        help="CIFAR-10 (image folder train/ test/, or cifar-10-batches-py) for the timed "
        "runs, or `synthetic`; without it, no timed runs",
    )
    p.add_argument("--model", choices=sorted(MODELS), default=None, help="default resnet56v2 (resnet20v1 with --quick)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated; default 128,64 (16 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each default-path run (default 2)")
    p.add_argument("--eager-epochs", type=int, default=None, help="epochs of each eager run (default 1; 0: none)")
    p.add_argument("--quick", action="store_true", help="tiny checks and runs: the plumbing, in seconds")
    p.add_argument("--out", default="gpu_check.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run it on a GPU machine, or --device cpu for the plumbing")
    device = torch.device(args.device)
    model = args.model or ("resnet20v1" if args.quick else "resnet56v2")
    batch_sizes = [int(b) for b in (args.batch_sizes or ("16" if args.quick else "128,64")).split(",")]
    epochs = args.epochs or (1 if args.quick else 2)
    eager_epochs = 1 if args.eager_epochs is None else args.eager_epochs
    from runner.engine.provenance import code_version, environment

    out = Path(args.out)
    result = {"env": {**environment(device), "code": code_version()}, "checks": [], "runs": [], "evaluation": None}
    env = result["env"]
    print(
        f"gpu_check: {env['device_name']}, torch {env['torch']}, cuda {env['cuda']}, cudnn {env['cudnn']}, "
        f"python {env['python']}, commit {(env['code']['commit'] or '?')[:10]}",
        flush=True,
    )
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        if args.checks:
            result["checks"] = all_checks(device, Path(tmp) / "checks", args.quick)
            failed += [c["check"] for c in result["checks"] if not c["ok"]]
            _save(result, out)
        if args.data_root:
            failed += timed_runs(args, device, model, batch_sizes, epochs, eager_epochs, Path(tmp), result, out)
    result["failed"] = failed
    _save(result, out)
    print(
        f"gpu_check: wrote {out}; {len(result['checks'])} checks, {len(result['runs'])} runs: "
        + ("all OK" if not failed else f"FAILED: {', '.join(map(str, failed))}"),
        flush=True,
    )
    return 1 if failed else 0


def timed_runs(args, device, model, batch_sizes, epochs, eager_epochs, tmp: Path, result: dict, out: Path) -> list:
    """The timed runs, each run even when one before it failed; returns the names of the failed ones."""
    data, failed = run_data(args.data_root, args.quick), []
    plan = [(bs, "default", epochs) for bs in batch_sizes] + [(bs, "eager", eager_epochs) for bs in batch_sizes]
    for bs, path, ep in plan:
        if not ep:
            continue
        try:
            result["runs"].append(timed_run(device, data, model, bs, path, ep, tmp / f"{path}_b{bs}"))
        except Exception:
            failed.append(f"run {path} batch {bs}")
            result["runs"].append({"batch_size": bs, "path": path, "error": traceback.format_exc(limit=8)})
            print(result["runs"][-1]["error"], flush=True)
        _reset(device)
        _save(result, out)
    try:
        result["evaluation"] = evaluation_times(device, data, model, tmp / "evaluation")
    except Exception:
        failed.append("evaluation times")
        result["evaluation"] = {"error": traceback.format_exc(limit=8)}
        print(result["evaluation"]["error"], flush=True)
    return failed


def _reset(device) -> None:
    torch._dynamo.reset()  # each run compiles its own model; the last one's graphs are not needed again
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _save(result: dict, out: Path) -> None:
    """After every step (atomically): a call cut short by a time limit keeps what it found."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out)


if __name__ == "__main__":
    raise SystemExit(main())
