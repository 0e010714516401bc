#!/usr/bin/env python
"""Time K runs trained as one pack (sweeps.pack.train_pack) against the same K runs one after another, in one run.

Both arms go through the same code: sweeps.pack.train_pack, given the K jobs at once, or one job at a time (a pack
of one is runner.engine.loop's setup → loop → finish, as `python -m runner` runs it). The jobs are a small lr × λ grid
over the four update rules (AdamW, Adam + L2, SGDW, SGD + L2), one seed, on synthetic images: what a sweep varies,
on what it shares. The timed window is the same steps in both arms: after `--warmup` steps of every job (graph
warm-up and capture, cuDNN autotuning, compilation) up to `--steps` steps later, the device synchronised at both
ends. Aggregate images/s = all jobs' images in the window / its seconds (for the sequential arm, the K windows'
seconds added up), so the sequential figure is the rate of one run alone and the ratio is what packing buys.
`wall` is each arm from the first setup to the last summary (set-up, capture, validation and checkpoints included).

    python scripts/pack_bench.py                          # CPU: ResNet20v1, batch 32, K=4, seconds
    python scripts/pack_bench.py --device cuda --out pack_bench.json    # ResNet56v2, batch 128, K=2,4,8, graphs on

Runs without hydra/omegaconf (RunConfig's dataclasses are built directly) and without TensorBoard (its event files
are then left out); imports runner from ../src. scripts/bench.py calls `bench_pack` for its `--pack K`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from runner.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainerConfig  # noqa: E402
from runner.core.models import MODELS  # noqa: E402
from runner.engine import provenance  # noqa: E402
from runner.sweeps.pack import Job, train_pack  # noqa: E402

DEFAULTS = {  # per device: what the targets are stated for on a GPU; seconds on a CPU
    "cpu": {"model": "resnet20v1", "batch_size": 32, "sizes": [4], "warmup": 2, "steps": 20, "n_val": 100},
    "cuda": {"model": "resnet56v2", "batch_size": 128, "sizes": [2, 4, 8], "warmup": 10, "steps": 200, "n_val": 1000},
}
RULES = [  # (preset name, algorithm, lr, wd, l2): the update rules of the studies, each at two strengths
    ("adamw", "adam", 1e-3, 5e-4, 0.0),
    ("adam_l2", "adam", 1e-3, 0.0, 5e-4),
    ("sgdw", "sgd", 0.05, 5e-4, 0.0),
    ("sgd_l2", "sgd", 0.05, 0.0, 5e-4),
    ("adamw", "adam", 2e-3, 1e-3, 0.0),
    ("adam_l2", "adam", 2e-3, 0.0, 1e-3),
    ("sgdw", "sgd", 0.1, 1e-3, 0.0),
    ("sgd_l2", "sgd", 0.1, 0.0, 1e-3),
]


def configs(
    k: int,
    device: str,
    model: str,
    batch_size: int,
    warmup: int,
    steps: int,
    n_val: int,
    compile: bool,
    graphs: bool | None,
) -> list[RunConfig]:
    """K runs of one epoch that stops after warmup + steps + 1 steps (the step after the window closes it)."""
    depth, version = MODELS[model]
    total = warmup + steps + 1
    data = DataConfig(name="synthetic", n_train=(total + 1) * batch_size, n_val=n_val)  # validation only at the end
    trainer = TrainerConfig(
        device=device,
        max_steps=total,
        log_every=50,
        compile=compile,
        cuda_graphs=graphs,
        progress=False,
        bn_recalibrate=0,
    )
    out = []
    for n in range(k):
        name, algorithm, lr, wd, l2 = RULES[n % len(RULES)]
        lr *= 1 + n // len(RULES)  # more than 8 jobs: the grid goes on to larger lr
        opt = OptimizerConfig(name=name, algorithm=algorithm)
        out.append(
            RunConfig(
                lr=lr,
                wd=wd,
                l2=l2,
                epochs=1,
                batch_size=batch_size,
                seed=0,
                data=data,
                model=ModelConfig(name=model, depth=depth, version=version),
                optimizer=opt,
                trainer=dataclasses.replace(trainer),
            )
        )
    return out


class Window:
    """train_pack's `around`: synchronises the device and reads the clock as turn `start` and turn `end` begin."""

    def __init__(self, start: int, end: int, sync: Callable[[], None]):
        self.turn, self.start, self.end, self.sync = 0, start, end, sync
        self.t0 = self.t1 = None

    @contextmanager
    def __call__(self, i: int):
        self.turn += 1
        if self.turn in (self.start, self.end):
            self.sync()
            now = time.perf_counter()
            self.t0, self.t1 = (now, None) if self.turn == self.start else (self.t0, now)
        yield

    @property
    def seconds(self) -> float:
        assert self.t0 is not None and self.t1 is not None, "the runs ended before the timed window closed"
        return self.t1 - self.t0


def timed_pack(cfgs: Sequence[RunConfig], root: Path, warmup: int, steps: int, sync: Callable[[], None]) -> dict:
    """Train `cfgs` as one pack into fresh folders under `root`; the window's and the whole call's seconds."""
    k = len(cfgs)
    jobs = []
    for n, cfg in enumerate(cfgs):
        run_dir = root / f"{time.monotonic_ns()}_{n}"
        run_dir.mkdir(parents=True)
        jobs.append(Job(cfg, run_dir, name=f"#{n}"))
    # turns: k setups, then one step of each job per round; the window spans rounds warmup+1 .. warmup+steps
    window = Window(start=k + k * warmup + 1, end=k + k * (warmup + steps) + 1, sync=sync)
    tick = time.perf_counter()
    outcomes = train_pack(jobs, around=window)
    sync()
    wall = time.perf_counter() - tick
    bad = [o.error or o.summary["status"] for o in outcomes if o.error or o.summary["status"] != "completed"]
    if bad:
        raise RuntimeError(f"benchmark runs did not complete: {bad}")
    return {
        "window_s": window.seconds,
        "wall_s": wall,
        "run_images_per_s": [o.summary["images_per_s"] for o in outcomes],
    }


def measure(
    sizes: Sequence[int],
    device: str = "cpu",
    *,
    model: str | None = None,
    batch_size: int | None = None,
    warmup: int | None = None,
    steps: int | None = None,
    compile: bool = False,
    graphs: bool | None = None,
    root: str | Path | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """One run per job of the largest pack, one after another; then a pack of each size in `sizes`, of the first
    jobs. Returns the figures (and prints them with `say`)."""
    d = DEFAULTS["cuda" if device == "cuda" else "cpu"]
    model, batch_size = model or d["model"], batch_size or d["batch_size"]
    warmup, steps = warmup if warmup is not None else d["warmup"], steps or d["steps"]
    sizes = sorted(set(sizes))
    cfgs = configs(max(sizes), device, model, batch_size, warmup, steps, d["n_val"], compile, graphs)
    dev = torch.device(device)
    sync = functools.partial(torch.cuda.synchronize, dev) if dev.type == "cuda" else (lambda: None)
    images = steps * batch_size  # per job, in the window
    _without_tensorboard_if_missing(say)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        say(
            f"pack_bench: {model}, batch {batch_size}, {device}, compile {compile}, cuda_graphs {graphs}: "
            f"{warmup} warm-up steps, then {steps} timed steps per job"
        )
        alone = [timed_pack([cfg], Path(tmp), warmup, steps, sync) for cfg in cfgs]
        one = {"images_per_s": [images / a["window_s"] for a in alone], "wall_s": [a["wall_s"] for a in alone]}
        say(f"  one run alone: {_rates(one['images_per_s'])} img/s")
        packs = []
        for k in sizes:
            _reset_peak(dev)
            p = timed_pack(cfgs[:k], Path(tmp), warmup, steps, sync)
            sequential = k * images / sum(a["window_s"] for a in alone[:k])
            packed = k * images / p["window_s"]
            row = {
                "k": k,
                "sequential_images_per_s": sequential,
                "pack_images_per_s": packed,
                "ratio": packed / sequential,
                "sequential_wall_s": sum(one["wall_s"][:k]),
                "pack_wall_s": p["wall_s"],
                "wall_ratio": sum(one["wall_s"][:k]) / p["wall_s"],
                "peak_memory_gb": _peak(dev),
                "pack_run_images_per_s": p["run_images_per_s"],
            }
            packs.append(row)
            say(
                f"  K={k}: sequential {sequential:,.0f} img/s, pack {packed:,.0f} img/s: {row['ratio']:.2f}x; "
                f"wall {row['sequential_wall_s']:.1f} s vs {p['wall_s']:.1f} s ({row['wall_ratio']:.2f}x)"
            )
    return {
        "device": device,
        "env": provenance.environment(dev),
        "code": provenance.code_version(),
        "model": model,
        "batch_size": batch_size,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "compile": compile,
        "cuda_graphs": graphs,
        "alone": one,
        "packs": packs,
        "jobs": [{"optimizer": c.optimizer.name, "lr": c.lr, "wd": c.wd, "l2": c.l2} for c in cfgs],
    }


def probe_fused(
    k: int,
    device: str = "cpu",
    *,
    model: str | None = None,
    batch_size: int | None = None,
    steps: int = 30,
    say: Callable[[str], None] = print,
) -> dict:
    """The road not taken, measured: forward + backward (no optimizer) of K models three ways, images/s over all K.
    `alone`: one model at a time; `streams`: the K models' steps on K CUDA streams (what runner.sweeps.pack does);
    `fused`: one model of K stacked parameter sets (torch.func.stack_module_state + vmap, which runs each
    convolution as one grouped convolution: HFTA's fusion). bf16 autocast on CUDA, CUDA graphs on CUDA (each way
    captured after 3 eager steps), contiguous layout everywhere (a stacked batch has no channels_last)."""
    import copy

    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state, vmap

    from runner.core.models import build_resnet

    d = DEFAULTS["cuda" if device == "cuda" else "cpu"]
    model, batch_size = model or d["model"], batch_size or d["batch_size"]
    dev, cuda = torch.device(device), device == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if cuda else contextlib.nullcontext()
    models = [build_resnet(*MODELS[model]).to(dev) for _ in range(k)]
    xs = torch.randn(k, batch_size, 3, 32, 32, device=dev)
    ys = torch.randint(0, 10, (k, batch_size), device=dev)
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def one(i):
        with autocast:
            F.cross_entropy(models[i](xs[i]), ys[i]).backward()

    def fused():
        def loss(p, b, x, y):
            return F.cross_entropy(functional_call(skeleton, (p, b), (x,)), y)

        with autocast:
            vmap(loss)(params, buffers, xs, ys).sum().backward()

    streams = [torch.cuda.Stream(dev) for _ in range(k)] if cuda else [None] * k
    step = {
        "alone": [lambda i=i: one(i) for i in range(k)],
        "fused": [fused],
        "streams": [lambda i=i: one(i) for i in range(k)],
    }
    out = {"model": model, "batch_size": batch_size, "k": k, "steps": steps}
    for way, calls in step.items():
        try:
            runs = [_graphed(f, dev, streams[i] if way == "streams" else None) for i, f in enumerate(calls)]
            seconds = _time_ways(way, runs, streams, steps, dev)
            out[way] = k * batch_size * steps / seconds
            say(f"  forward+backward, {way}: {out[way]:,.0f} img/s")
        except Exception as e:  # a probe: its failure is a finding, not the benchmark's end
            out[way] = f"failed: {type(e).__name__}: {e}"
            say(f"  forward+backward, {way}: {out[way]}")
    for way in ("streams", "fused"):
        if isinstance(out[way], float) and isinstance(out["alone"], float):
            out[f"{way}_vs_alone"] = out[way] / out["alone"]
    return out


def _graphed(f: Callable[[], None], dev: torch.device, stream) -> Callable[[], None]:
    """`f` as a CUDA graph replay on `stream` (after 3 eager calls); `f` itself off CUDA."""
    if dev.type != "cuda":
        return f
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(3):
            f()
    torch.cuda.synchronize(dev)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        f()
    torch.cuda.synchronize(dev)
    if stream is None:
        return graph.replay

    def replay():
        with torch.cuda.stream(stream):
            graph.replay()

    return replay


def _time_ways(way: str, runs: list, streams: list, steps: int, dev: torch.device) -> float:
    """Seconds for `steps` steps of every model: one model after another, round robin on streams, or fused."""
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for r in runs:
        r()
    sync()
    tick = time.perf_counter()
    if way == "alone":
        for r in runs:
            for _ in range(steps):
                r()
            sync()
    else:
        for _ in range(steps):
            for r in runs:
                r()
    sync()
    return time.perf_counter() - tick


def bench_pack(k: int, device: str = "cpu", **options) -> dict:
    """scripts/bench.py's `--pack K`: K jobs as one pack vs one after another; the figures of that K, flattened."""
    result = measure([k], device, **options)
    return {**{key: v for key, v in result.items() if key != "packs"}, **result["packs"][0]}


def _rates(values: Sequence[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


def _without_tensorboard_if_missing(say: Callable[[str], None]) -> None:
    """A GPU box with torch alone: the runs write metrics.jsonl and summaries, no TensorBoard events."""
    if importlib.util.find_spec("tensorboard") is None:
        import runner.engine.build
        from runner.engine.records import Recorder

        runner.engine.build.Recorder = functools.partial(Recorder, tensorboard=False)  # type: ignore[misc]
        say("pack_bench: tensorboard is not installed: the runs write no event files")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--pack", default=None, help="pack sizes K, comma-separated (cpu: 4, cuda: 2,4,8)")
    p.add_argument("--model", default=None, choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per job before the window")
    p.add_argument("--steps", type=int, default=None, help="timed steps per job")
    p.add_argument("--compile", choices=("on", "off"), default="off", help="torch.compile each run's model")
    p.add_argument(
        "--graphs", choices=("auto", "on", "off"), default="auto", help="trainer.cuda_graphs (auto: on for cuda)"
    )
    p.add_argument("--probe", action="store_true", help="also time forward+backward alone, on streams and fused")
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.pack.split(",")] if a.pack else DEFAULTS[a.device]["sizes"]
    graphs = {"auto": None, "on": True, "off": False}[a.graphs]
    result = measure(
        sizes,
        a.device,
        model=a.model,
        batch_size=a.batch_size,
        warmup=a.warmup,
        steps=a.steps,
        compile=a.compile == "on",
        graphs=graphs,
    )
    if a.probe:
        print(f"probe: forward+backward of K={max(sizes)} models, three ways")
        result["probe"] = probe_fused(max(sizes), a.device, model=a.model, batch_size=a.batch_size)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
