#!/usr/bin/env python
"""Time the runner's training loop against a tutorial-style PyTorch loop, in one process and one run.

    runner     : runner.data.DeviceLoader (the whole split on the device; crop, flip and normalise as
                 batched tensor ops) feeding runner.train.train_step, bookkeeping as in runner.train.train
                 (schedule per step, losses kept on the device and read every 50 steps).
    reference  : the same model (runner.models.build_resnet) and optimizer (runner.optim.Optimizer), fed
                 the way a typical tutorial does it: a torchvision.datasets.CIFAR10-style Dataset (uint8
                 HWC arrays, one PIL image per item), RandomCrop(32, padding=4) + RandomHorizontalFlip +
                 ToTensor + Normalize per image, DataLoader(shuffle=True, num_workers=N, pin_memory on
                 cuda), `.to(device)` per batch and `loss.item()` per step.

    graphed    : the runner's loop with trainer.cuda_graphs=true (runner.graphs.GraphedStep: the whole step,
                 schedule included, replayed as one CUDA graph per batch shape); on CPU the same device-side
                 step runs uncaptured, which only checks that the path works.

Also timed: the input pipeline alone (DeviceLoader vs the DataLoader, no model), the validation pass
(runner.train.evaluate), and the loop overhead: 1 − (runner loop images/s) / (forward + backward +
optimizer images/s on one pre-made batch), from interleaved windows. Every rate is the median of
several windows after warm-up; CUDA is synchronised only at window ends. With torch.compile the time
of the first step (compilation) is reported apart from the training rate.

Runs without hydra/omegaconf and without the package installed: it imports runner from ../src.

    python scripts/bench.py                       # CPU: ResNet20v1, batch 32, < 2 min on 2 cores
    python scripts/bench.py --device cuda         # ResNet56v2, batch 128 and 512, bf16, compile and graphs off and on
    python scripts/bench.py --quick --out /tmp/b.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

import runner  # noqa: E402
from runner import data as rdata  # noqa: E402
from runner.config import ScheduleConfig  # noqa: E402  (a plain dataclass; no omegaconf)
from runner.models import MODELS, build_resnet  # noqa: E402
from runner.graphs import GraphedStep, step_tables  # noqa: E402
from runner.optim import Optimizer, decoupled_rate  # noqa: E402
from runner.schedules import make_schedule  # noqa: E402
from runner.evaluation import evaluate  # noqa: E402
from runner.graphs import GraphedForward  # noqa: E402
from runner.run import VAL_BATCH  # noqa: E402
from runner.train import train_step  # noqa: E402

EPOCH_IMAGES, VAL_IMAGES = 50_000, 10_000  # CIFAR-10's training and test set sizes, for the estimates
LOG_EVERY = 50  # runner.train reads the losses back every trainer.log_every (default 50) steps
LR, WD = 1e-3, 5e-4
MIN_WINDOWS = 3

DEFAULTS = {  # per device; every one of these can be overridden by its flag
    "cpu": dict(model="resnet20v1", batch_sizes=[32], windows=9, window_steps=12, warmup_steps=3, compile="off", graphs="off",
                workers=2, n_train=4096, n_val=1000, val_passes=3, pipeline_batches=40, budget_s=20.0),
    "cuda": dict(model="resnet56v2", batch_sizes=[128, 512], windows=5, window_steps=40, warmup_steps=15,
                 compile="both", graphs="on", workers=min(8, os.cpu_count() or 1), n_train=EPOCH_IMAGES, n_val=VAL_IMAGES,
                 val_passes=5, pipeline_batches=100, budget_s=None),
    "quick": dict(model="resnet20v1", batch_sizes=[16], windows=2, window_steps=2, warmup_steps=1, compile="off", graphs="off",
                  workers=1, n_train=256, n_val=200, val_passes=1, pipeline_batches=4, budget_s=None),
}


# ---------------------------------------------------------------- the tutorial-style reference

class TutorialCIFAR(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does: uint8 HWC arrays in memory, a PIL image per item, then the transform."""

    def __init__(self, data: np.ndarray, targets: list[int], transform):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = Image.fromarray(self.data[index]), self.targets[index]
        return self.transform(img), target


def tutorial_loader(x_u8: torch.Tensor, y: torch.Tensor, batch_size: int, mean, std, workers: int, cuda: bool):
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    dataset = TutorialCIFAR(x_u8.permute(0, 2, 3, 1).contiguous().numpy(), y.tolist(), transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=cuda)


def forever(loader):
    """`for epoch in range(E): for x, y in loader:` — a fresh iterator (and fresh workers) every epoch."""
    while True:
        yield from loader


def device_batches(loader: rdata.DeviceLoader):
    e = 0
    while True:
        yield from loader.epoch(e)
        e += 1


# ---------------------------------------------------------------- timing

class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def measure(steps: dict, clock: Clock, warmup: int, windows: int, window_steps: int, budget_s: float | None = None) -> dict:
    """Warm each step function up, then time `windows` windows of `window_steps` calls each, the
    functions' windows interleaved (A B A B ...). A step function returns the images it processed.
    Returns per name: images/s per window, their median, and the warm-up time (first call apart).
    With `budget_s`, stops after the round that passes it (at least MIN_WINDOWS rounds): a CPU
    shared with other work must not stretch the run without bound."""
    out = {}
    for name, fn in steps.items():
        t0 = clock()
        fn()
        t1 = clock()
        for _ in range(warmup - 1):
            fn()
        out[name] = {"first_step_s": t1 - t0, "warmup_s": clock() - t0, "windows": []}
    start = time.perf_counter()
    for k in range(windows):
        for name, fn in steps.items():
            t0 = clock()
            n = sum(fn() for _ in range(window_steps))
            out[name]["windows"].append(n / (clock() - t0))
        if budget_s is not None and k + 1 >= MIN_WINDOWS and time.perf_counter() - start > budget_s:
            break
    for r in out.values():
        r["images_per_s"] = statistics.median(r["windows"])
    return out


# ---------------------------------------------------------------- the measured pieces

def build(model_name: str, device, channels_last: bool, compile_: bool, capturable: bool = False):
    torch.manual_seed(0)  # runner and reference start from the same weights
    depth, version = MODELS[model_name]
    model = build_resnet(depth, version, 10).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = Optimizer(model, algorithm="adam", lr=LR, l2=0.0, wd=WD, decay=decoupled_rate(WD, "schedule", LR),
                    capturable=capturable)
    return model, (torch.compile(model, dynamic=False) if compile_ else model), opt  # as runner.train compiles


def bookkept(take_step, opt, loader: rdata.DeviceLoader):
    """runner.train's loop around one step: the next batch, records kept on the device, and every LOG_EVERY
    steps one device→host read of the pending losses, ‖g‖ and the weight norms (its flush).
    `take_step(x, y, k, log_point)` trains step k and returns (loss, lr_k, d_k, ‖g‖ or None)."""
    batches, state = device_batches(loader), {"step": 0, "pending": []}
    epoch_loss = torch.zeros((), device=loader.device)

    def loop() -> int:
        x, y = next(batches)
        k = state["step"]
        log_point = (k + 1) % LOG_EVERY == 0
        loss, lr_k, d_k, grad_norm = take_step(x, y, k, log_point)
        state["step"] = k + 1
        epoch_loss.add_(loss)
        state["pending"].append((k + 1, lr_k, d_k, loss, grad_norm))
        if log_point:
            torch.stack([p[3] for p in state["pending"]]).tolist()
            [v.item() for v in (*opt.weight_stats().values(), grad_norm)]
            state["pending"] = []
        return len(y)

    return loop, state


def runner_steps(forward, opt, loader: rdata.DeviceLoader, autocast, schedule):
    """(loop, core): the runner's loop step as runner.train.train runs it, and forward + backward +
    optimizer alone on one pre-made batch. Both train the same model."""
    spe = len(loader)

    def take_step(x, y, k, log_point):
        eta = schedule(k / spe)
        loss, d_k, grad_norm = train_step(forward, opt, x, y, k / spe, eta, autocast, want_grad_norm=log_point)
        return loss, LR * eta, d_k, grad_norm

    loop, state = bookkept(take_step, opt, loader)
    x0, y0 = next(device_batches(loader))

    def core() -> int:
        t = state["step"] / spe
        with autocast:
            loss = F.cross_entropy(forward(x0), y0)
        loss.backward()
        opt.step(t, schedule(t))
        opt.zero_grad()
        return len(y0)

    return loop, core


def graphed_steps(forward, opt, loader: rdata.DeviceLoader, autocast, schedule, n_steps: int):
    """The runner's loop step with trainer.cuda_graphs=true: GraphedStep (captured on CUDA), records as runner.train."""
    lrs, decays = step_tables(schedule, opt.decay, LR, len(loader), n_steps)
    graphed = GraphedStep(forward, opt, autocast, lrs, decays, capture=loader.device.type == "cuda")

    def take_step(x, y, k, log_point):
        loss, grad_norm, _ = graphed(x, y, k)
        return loss, lrs[k], decays[k], grad_norm if log_point else None

    return bookkept(take_step, opt, loader)[0], graphed


def reference_step(forward, opt, loader, device, autocast, schedule):
    """The tutorial training loop body, one batch per call."""
    spe, batches = len(loader), forever(loader)
    state = {"step": 0, "running_loss": 0.0}

    def step() -> int:
        inputs, targets = next(batches)
        inputs, targets = inputs.to(device), targets.to(device)
        t = state["step"] / spe
        opt.zero_grad()
        with autocast:
            outputs = forward(inputs)
            loss = F.cross_entropy(outputs, targets)
        loss.backward()
        opt.step(t, schedule(t))
        state["running_loss"] += loss.item()
        state["step"] += 1
        return len(targets)

    return step, batches


def pipeline_only(dev_loader: rdata.DeviceLoader, ref_loader, device, clock, warmup, windows, n_batches, budget_s):
    """Images/s of augmentation + batching alone: DeviceLoader batches vs DataLoader batches moved to the device."""
    dev_it, ref_it = device_batches(dev_loader), forever(ref_loader)

    def dev() -> int:
        return len(next(dev_it)[1])

    def ref() -> int:
        x, y = next(ref_it)
        x, y = x.to(device), y.to(device)
        return len(y)

    r = measure({"runner": dev}, clock, warmup, windows, n_batches, budget_s)
    r.update(measure({"reference": ref}, clock, warmup, windows, n_batches, budget_s))
    ref_it.close()  # shuts the DataLoader's workers down
    return r


def validation(forward, val_loader, autocast, clock, passes: int) -> dict:
    t0 = clock()
    [v.item() for v in evaluate(forward, GraphedForward(forward, autocast, capture=False), val_loader)]  # warm-up (and, compiled, the eval-mode compile)
    first = clock() - t0
    times = []
    for _ in range(passes):
        t0 = clock()
        loss, acc = (v.item() for v in evaluate(forward, GraphedForward(forward, autocast, capture=False), val_loader))
        times.append(clock() - t0)
    n = len(val_loader.y)
    s = statistics.median(times)
    return {"images": n, "batch_size": val_loader.batch_size, "first_pass_s": first, "pass_s": times,
            "seconds": s, "images_per_s": n / s, f"est_{VAL_IMAGES}_images_s": VAL_IMAGES * s / n}


# ---------------------------------------------------------------- environment

def environment(device: torch.device) -> dict:
    cpu_name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name,
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "cpu_name": cpu_name,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "runner": getattr(runner, "__version__", None),
        "runner_path": str(Path(runner.__file__).resolve().parent),
        "hydra_loaded": any(m.split(".")[0] in ("hydra", "omegaconf") for m in sys.modules),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,  # others' work on a shared machine
    }


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--model", choices=sorted(MODELS), help="default: resnet20v1 on cpu, resnet56v2 on cuda")
    p.add_argument("--batch-sizes", help="comma-separated; default: 32 on cpu, 128,512 on cuda")
    p.add_argument("--windows", type=int, help="timed windows per measurement (median reported)")
    p.add_argument("--window-steps", type=int, help="training steps per window")
    p.add_argument("--warmup-steps", type=int, help="untimed steps before the windows")
    p.add_argument("--compile", choices=("both", "on", "off"), help="torch.compile the model; default off on cpu, both on cuda")
    p.add_argument("--graphs", choices=("on", "off"), help="also time the loop with trainer.cuda_graphs=true, next to "
                                                           "the eager loop; default on for cuda, off on cpu")
    p.add_argument("--workers", type=int, help="reference DataLoader num_workers; default 2 on cpu, min(8, cpus) on cuda")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: the usable CPUs)")
    p.add_argument("--n-train", type=int, help="synthetic training images (default 4096 cpu, 50000 cuda)")
    p.add_argument("--n-val", type=int, help="validation images (default 1000 cpu, 10000 cuda)")
    p.add_argument("--val-passes", type=int, help="timed validation passes")
    p.add_argument("--budget-s", type=float, help="stop a measurement after the window that passes this many "
                                                  "seconds (at least 3 windows); default 20 on cpu, none on cuda")
    p.add_argument("--val-batch", type=int, default=None, help=f"validation batch (default: runner.train's, {VAL_BATCH})")
    p.add_argument("--data-root", help="real images instead of synthetic ones: a folder holding cifar-10-batches-py, "
                                       "or an image folder root/train/<class>/*.png (runner.data.load_image_folder)")
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds): for the tests")
    p.add_argument("--out", default="bench.json", help="JSON results (default: bench.json in the working directory)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device is available here (use --device cpu or auto)")
        device = torch.device(args.device)
    cuda = device.type == "cuda"
    d = dict(DEFAULTS["quick" if args.quick else device.type])
    for k in ("model", "windows", "window_steps", "warmup_steps", "compile", "graphs", "workers", "n_train", "n_val", "val_passes",
              "budget_s"):
        if getattr(args, k) is not None:
            d[k] = getattr(args, k)
    if args.batch_sizes:
        d["batch_sizes"] = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if min(d["windows"], d["window_steps"], d["warmup_steps"], *d["batch_sizes"]) < 1:
        sys.exit("--windows, --window-steps, --warmup-steps and --batch-sizes must be ≥ 1")
    torch.set_num_threads(args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    compiles = {"both": [False, True], "on": [True], "off": [False]}[d["compile"]]
    if cuda:
        torch.backends.cudnn.benchmark = True  # as runner.train does
    channels_last = cuda  # runner.train's default: on for cuda
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()  # runner: bf16 on cuda, fp32 elsewhere
    # with graphs runner.train turns autocast's weight cache off: a graph cannot hold it
    autocast_graphs = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if cuda else nullcontext()
    graphs = d["graphs"] == "on"
    clock = Clock(device)

    t_load = time.perf_counter()
    if args.data_root:
        root = Path(args.data_root).expanduser()
        splits = (rdata.load_cifar10(root, download=False) if (root / rdata.CIFAR10_FOLDER).is_dir()
                  else rdata.load_image_folder(root))
        keep = min(d["n_val"], len(splits.val_y))
        splits = rdata.Splits(splits.train_x, splits.train_y, splits.val_x[:keep], splits.val_y[:keep], splits.classes)
        data_name = str(root)
    else:
        splits = rdata.make_synthetic(d["n_train"], d["n_val"], seed=0)
        data_name = "synthetic"
    mean, std = rdata.channel_stats(splits.train_x)
    n_train = len(splits.train_y)
    schedule = make_schedule(ScheduleConfig(), epochs=30)  # the default piecewise-constant schedule
    env = environment(device)
    settings = {**d, "batch_sizes": d["batch_sizes"], "compile": compiles, "cuda_graphs": graphs, "data": data_name, "n_train": n_train,
                "n_val": len(splits.val_y), "channels_last": channels_last, "precision": "bf16" if cuda else "fp32",
                "optimizer": f"runner.optim.Optimizer adam lr={LR} wd={WD} (decoupled, schedule scaling)",
                "data_load_s": time.perf_counter() - t_load}
    print(f"bench: {env['device_name']} | torch {env['torch']} torchvision {env['torchvision']} cuda {env['cuda']} "
          f"cudnn {env['cudnn']} python {env['python']} | {env['cpu_count']} CPUs, {env['torch_threads']} torch threads",
          flush=True)
    print(f"bench: {d['model']}, batch {d['batch_sizes']}, compile {compiles}, cuda graphs {d['graphs']}, {data_name} {n_train} train / "
          f"{len(splits.val_y)} val, {d['windows']} windows x {d['window_steps']} steps after {d['warmup_steps']} warm-up, "
          f"reference num_workers={d['workers']}", flush=True)

    def loaders(bs):
        dev = rdata.DeviceLoader(splits.train_x, splits.train_y, bs, device=device, shuffle=True, crop_padding=4,
                                 flip=True, pad_mode="zeros", mean=mean, std=std, seed=0, channels_last=channels_last)
        ref = tutorial_loader(splits.train_x, splits.train_y, bs, mean, std, d["workers"], cuda)
        return dev, ref

    results = {"env": env, "settings": settings, "input_pipeline": [], "train": [], "validation": []}
    for bs in d["batch_sizes"]:
        dev_loader, ref_loader = loaders(bs)
        pb = max(1, min(d["pipeline_batches"], 4 * len(dev_loader)))
        r = pipeline_only(dev_loader, ref_loader, device, clock, d["warmup_steps"], d["windows"], pb, d["budget_s"])
        row = {"batch_size": bs, "runner": r["runner"], "reference": r["reference"],
               "ratio": r["runner"]["images_per_s"] / r["reference"]["images_per_s"]}
        results["input_pipeline"].append(row)
        print(f"input pipeline  batch {bs:4d}: runner {row['runner']['images_per_s']:10.0f} img/s   reference "
              f"{row['reference']['images_per_s']:8.0f} img/s   ratio {row['ratio']:6.1f}x", flush=True)

        for comp in compiles:
            # runner: its loop and the bare forward/backward/optimizer, windows interleaved
            model, forward, opt = build(d["model"], device, channels_last, comp)
            loop, core = runner_steps(forward, opt, dev_loader, autocast, schedule)
            steps = {"loop": loop, "core": core}
            if graphs:  # a second model, trained by the graphed loop; windows interleaved with the eager loop's
                n_steps = d["warmup_steps"] + d["windows"] * d["window_steps"] + 1
                g_model, g_forward, g_opt = build(d["model"], device, channels_last, comp, capturable=True)
                steps["graphed"], g_step = graphed_steps(g_forward, g_opt, dev_loader, autocast_graphs, schedule, n_steps)
            m = measure(steps, clock, d["warmup_steps"], d["windows"], d["window_steps"], d["budget_s"])
            run, core_r = m["loop"], m["core"]
            graphed_r = m.get("graphed")
            if graphed_r is not None:
                graphed_r["capture_s"] = g_step.capture_s
                graphed_r["graphs"] = len(g_step.graphs)  # 0 on cpu (uncaptured) or when warm-up outlasted the run
                del g_model, g_forward, g_opt, g_step, steps
            per_step = bs / run["images_per_s"]
            run["compile_s"] = max(0.0, run["first_step_s"] - per_step) if comp else None
            # per interleaved pair of windows, so that a load change between pairs cancels out
            share_raw = statistics.median(1 - a / b for a, b in zip(run["windows"], core_r["windows"]))
            if bs == d["batch_sizes"][0]:  # the validation pass (the runner's batch) depends on compile, not on bs
                val_batch = args.val_batch or VAL_BATCH.get(device.type, 100)
                val_loader = rdata.DeviceLoader(splits.val_x, splits.val_y, val_batch, device=device, shuffle=False,
                                                mean=mean, std=std, channels_last=channels_last)
                results["validation"].append({"compile": comp, "val_batch": val_batch, **validation(forward, val_loader, autocast, clock,
                                                                            d["val_passes"])})
            del model, forward, opt, loop, core
            if comp:
                torch._dynamo.reset()

            # reference: same model and optimizer, tutorial data pipeline and loop
            model, forward, opt = build(d["model"], device, channels_last, comp)
            step, batches = reference_step(forward, opt, ref_loader, device, autocast, schedule)
            ref = measure({"reference": step}, clock, d["warmup_steps"], d["windows"], d["window_steps"],
                          d["budget_s"])["reference"]
            batches.close()
            ref["compile_s"] = max(0.0, ref["first_step_s"] - bs / ref["images_per_s"]) if comp else None
            del model, forward, opt, step, batches
            if comp:
                torch._dynamo.reset()

            row = {"batch_size": bs, "compile": comp, "model": d["model"], "runner": run, "reference": ref,
                   "ratio": run["images_per_s"] / ref["images_per_s"],
                   "graphed": graphed_r,
                   "graphed_ratio": graphed_r["images_per_s"] / ref["images_per_s"] if graphed_r else None,
                   "epoch_s_est": {"runner": EPOCH_IMAGES / run["images_per_s"],
                                   "graphed": EPOCH_IMAGES / graphed_r["images_per_s"] if graphed_r else None,
                                   "reference": EPOCH_IMAGES / ref["images_per_s"]},
                   "overhead": {"loop_images_per_s": run["images_per_s"], "core_images_per_s": core_r["images_per_s"],
                                "core_windows": core_r["windows"], "share_raw": share_raw,
                                "share": min(1.0, max(0.0, share_raw))}}
            results["train"].append(row)
            # the reference compiles second, so it may hit caches the runner's compile filled (same graphs)
            extra = (f"   first-step compile {run['compile_s']:.1f} s / {ref['compile_s']:.1f} s (reference: warm caches)"
                     if comp else "")
            print(f"train {d['model']} batch {bs:4d} compile {'on ' if comp else 'off'}: runner {run['images_per_s']:8.1f} "
                  f"img/s   reference {ref['images_per_s']:8.1f} img/s   ratio {row['ratio']:5.2f}   "
                  f"loop overhead {100 * share_raw:5.1f} %   epoch (50k) {row['epoch_s_est']['runner']:.0f} s / "
                  f"{row['epoch_s_est']['reference']:.0f} s{extra}", flush=True)
            if graphed_r:
                print(f"train {d['model']} batch {bs:4d} compile {'on ' if comp else 'off'} + cuda graphs "
                      f"({graphed_r['graphs']} captured, {graphed_r['capture_s']:.2f} s): {graphed_r['images_per_s']:8.1f} img/s   "
                      f"ratio {row['graphed_ratio']:5.2f}   epoch (50k) {row['epoch_s_est']['graphed']:.2f} s", flush=True)
        del dev_loader, ref_loader
        if cuda:
            torch.cuda.empty_cache()

    for v in results["validation"]:
        print(f"validation compile {'on ' if v['compile'] else 'off'}: {v['images']} images in {v['seconds']:.3f} s "
              f"({v['images_per_s']:.0f} img/s, est. {v[f'est_{VAL_IMAGES}_images_s']:.2f} s for {VAL_IMAGES}); "
              f"first pass {v['first_pass_s']:.2f} s", flush=True)

    first = results["train"][0]
    results["summary"] = {
        "device": env["device"], "device_name": env["device_name"], "model": d["model"],
        "batch_size": first["batch_size"], "compile": first["compile"],
        "runner_images_per_s": first["runner"]["images_per_s"],
        "reference_images_per_s": first["reference"]["images_per_s"],
        "ratio": first["ratio"],
        "input_pipeline_runner_images_per_s": results["input_pipeline"][0]["runner"]["images_per_s"],
        "input_pipeline_reference_images_per_s": results["input_pipeline"][0]["reference"]["images_per_s"],
        "input_pipeline_ratio": results["input_pipeline"][0]["ratio"],
        "loop_overhead_share": first["overhead"]["share"],
        "loop_overhead_share_raw": first["overhead"]["share_raw"],
        "validation_s": results["validation"][0]["seconds"],
        "validation_images": results["validation"][0]["images"],
        f"validation_{VAL_IMAGES}_images_s_est": results["validation"][0][f"est_{VAL_IMAGES}_images_s"],
        "epoch_s_est": first["epoch_s_est"]["runner"],
    }
    # the fastest runner variant at each batch size: what the README's epoch-time target reads
    results["summary"]["fastest"] = {}
    for row in results["train"]:
        for kind in ("runner", "graphed"):
            r = row[kind]
            if r is None:
                continue
            best = results["summary"]["fastest"].get(str(row["batch_size"]))
            if best is None or r["images_per_s"] > best["images_per_s"]:
                results["summary"]["fastest"][str(row["batch_size"])] = {
                    "images_per_s": r["images_per_s"], "epoch_s_est": EPOCH_IMAGES / r["images_per_s"],
                    "compile": row["compile"], "cuda_graphs": kind == "graphed",
                    "ratio_to_reference": r["images_per_s"] / row["reference"]["images_per_s"]}
    results["env"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["env"]["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"bench: wrote {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
