"""What the benchmarks share (scripts/bench.py and the bench_*.py beside it): the Runs they time
(engine.build.setup on the bench's data, one execution path each), their settings and common
flags, and the frame of one benchmark's results (the environment block, a header, the JSON file).

Each benchmark runs as `python scripts/NAME.py` where hydra/omegaconf are missing and the package
is not installed: it puts this checkout on sys.path (runner from src/, these scripts as the package
`scripts`) before importing this module, which imports nothing of hydra's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import runner
from runner.config import DataConfig, ModelConfig, RunConfig, TrainerConfig
from runner.core.models import MODELS
from runner.data import cifar10, load_splits
from runner.engine import build, lock
from runner.engine.provenance import code_version, environment
from runner.engine.run import Run
from runner.engine.step import GraphedStep
from scripts.timing_harness import Clock, save_json

EPOCH_IMAGES, VAL_IMAGES = 50_000, 10_000  # CIFAR-10's training and test sets, for the estimates
# configs/config.yaml and configs/optimizer/adamw.yaml: what `python -m runner` trains with
LR, WD = 1e-3, 5e-4
RUN_SETTINGS = {"lr": LR, "wd": WD, "optimizer": "adamw (runner.core.update_rule.Optimizer)"}
# execution path → (trainer.compile, trainer.cuda_graphs); on CUDA null (auto) means compile+graphs
PATHS = {
    "eager": (False, False),  # trainer.compile=false trainer.cuda_graphs=false
    "graphs": (False, True),
    "compile": (True, False),
    "compile+graphs": (True, True),
}
# per device (or --quick): what every benchmark's Runs are; each script adds its own settings
COMMON = {
    "cpu": dict(model="resnet20v1", batch_sizes=[32], paths=["eager"], n_train=4096, n_val=1000),
    "cuda": dict(
        model="resnet56v2",
        batch_sizes=[128, 64],  # the study's batch first: a run cut short has measured it
        paths=["eager", "graphs", "compile+graphs"],
        n_train=EPOCH_IMAGES,
        n_val=VAL_IMAGES,
    ),
    "quick": dict(model="resnet20v1", batch_sizes=[16], paths=["eager"], n_train=256, n_val=200),
}


@dataclasses.dataclass
class Bench:
    """What every measurement needs: the resolved settings, the device, the data, a folder for the
    Runs, the clock, the results file."""

    s: dict
    device: torch.device
    data: DataConfig | None
    folder: Path
    clock: Clock
    out: Path
    # engine.build.setup's data_cache: loaded once, untimed
    cache: dict = dataclasses.field(default_factory=dict)

    def config(
        self, batch_size: int, path: str, *, epochs: int, model: str | None = None, **trainer
    ) -> RunConfig:
        """The RunConfig `python -m runner` trains with (adamw, piecewise-constant schedule, trainer
        defaults) on the bench's data, with one execution path and `trainer` overrides. Off CUDA
        the graphs paths are set up eager (trainer.cuda_graphs=true is refused there): `run` swaps
        in the uncaptured graphed step."""
        compile_, graphs = PATHS[path]
        name = model or self.s["model"]
        depth, version = MODELS[name]
        tr = dict(device=self.device.type, compile=compile_, progress=False)
        tr["cuda_graphs"] = graphs and self.device.type == "cuda"
        return RunConfig(
            lr=LR,
            wd=WD,
            epochs=epochs,
            batch_size=batch_size,
            seed=0,
            model=ModelConfig(name=name, depth=depth, version=version),
            data=self.data,
            trainer=TrainerConfig(**{**tr, **trainer}),
        )

    def run(self, batch_size: int, path: str, name: str, *, epochs: int, **trainer) -> Run:
        """A Run as runner.engine.build.setup builds it, in its own folder; off CUDA the graphs path
        runs uncaptured."""
        cfg = self.config(batch_size, path, epochs=epochs, **trainer)
        run = build.setup(cfg, self.subfolder(name), data_cache=self.cache)
        if PATHS[path][1] and self.device.type != "cuda":
            uncaptured_graphs(run)
        return run

    def subfolder(self, name: str) -> Path:
        """A fresh run folder (setup() expects the folder to exist, as the CLI makes it)."""
        (self.folder / name).mkdir(parents=True)
        return self.folder / name

    def steps_per_epoch(self, batch_size: int) -> int:
        # data.drop_last: full batches only
        return len(load_splits(self.data, 0, self.cache).train_y) // batch_size

    def save(self, results: dict) -> None:
        """After every section: a run cut short keeps what it measured."""
        save_json(results, self.out)


def uncaptured_graphs(run: Run) -> None:
    """Off CUDA: the graphs path's device-side step, uncaptured (GraphedStep(capture=False)), in
    place of the eager step of a Run set up eager. It shows that the path works there (the quick
    tests run it); its speed says nothing about a captured graph."""
    ex = run.trainee.execution
    forward, start = ex.step.forward, run.state.step
    ex.step = GraphedStep(forward, ex.opt, ex.autocast, ex.plan, start, capture=False)


def execution(run: Run) -> dict:
    """The path the Run's step runs on now, as summary.json's `path` says it; cuda_graphs is
    'uncaptured' for the graphs path off CUDA."""
    out, graphed = run.trainee.path.summary(), run.trainee.graphed
    if graphed is not None and not graphed.capture:
        out["cuda_graphs"] = "uncaptured"
    return out


def close(run: Run) -> None:
    """Close a Run's records (its TensorBoard writer holds a thread) and let go of its folder's
    lock, without writing a summary."""
    recorder = run.out.recorder
    if recorder.tb is not None:
        recorder.tb.close()
    recorder.close()
    lock.release(run.out.run_dir)


def data_config(s: dict, data_root: str | None) -> DataConfig:
    if not data_root:
        return DataConfig(n_train=s["n_train"], n_val=s["n_val"])
    root = Path(data_root).expanduser()
    name = "cifar10" if (root / cifar10.CIFAR10_FOLDER).is_dir() else "image_folder"
    return DataConfig(name=name, source=name, root=str(root), download=False)


# ---------------------------------------------------------------- flags and settings


def parser(doc: str, out: str, data=True, models="resnet20v1 cpu, resnet56v2 cuda"):
    """The flags every benchmark takes; `data`: also those of the images its Runs train on;
    `models`: the default models, for --model's help."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--model", choices=sorted(MODELS), help=f"default: {models}")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: the usable CPUs)")
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds): for the tests")
    p.add_argument("--out", default=out, help=f"JSON results (default: {out} here)")
    if data:
        p.add_argument(
            "--n-train", type=int, help="synthetic training images (4096 cpu, 50000 cuda)"
        )
        p.add_argument(
            "--n-val", type=int, help="synthetic validation images (1000 cpu, 10000 cuda)"
        )
        p.add_argument(
            "--data-root",
            help="real images instead of synthetic ones: a folder holding cifar-10-batches-py, "
            "or an image folder root/train/<class>/*.png (runner.data.image_folder)",
        )
    return p


def paths_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--paths",
        help=f"comma-separated execution paths, of {', '.join(PATHS)}; default eager on cpu, "
        "eager,graphs,compile+graphs on cuda",
    )


def settings(args, device: torch.device, own: dict, positive=(), common=tuple(COMMON["cpu"])):
    """The `common` settings of COMMON for the device (or --quick) and the script's `own` on top,
    then the flags given (a flag is named as its setting); a bad value exits with the fix."""
    which = "quick" if args.quick else device.type
    s = {k: COMMON[which][k] for k in common} | own[which]
    for k in s.keys() - {"batch_sizes", "paths"}:  # those two are lists, given comma-separated
        if getattr(args, k, None) is not None:
            s[k] = getattr(args, k)
    for k in {"batch_sizes", "paths"} & s.keys():
        if getattr(args, k, None):
            s[k] = [v.strip() for v in getattr(args, k).split(",") if v.strip()]
    if "paths" in s and (not s["paths"] or any(p not in PATHS for p in s["paths"])):
        sys.exit(f"bench: --paths {args.paths!r}: each must be one of {', '.join(PATHS)}")
    if "batch_sizes" in s:
        s["batch_sizes"] = [int(v) for v in s["batch_sizes"]]
    values = [s[k] for k in positive] + s.get("batch_sizes", [])
    if values and min(values) < 1:
        names = [*positive] + ["batch_sizes"] * ("batch_sizes" in s)
        sys.exit(f"bench: {', '.join('--' + k.replace('_', '-') for k in names)} must be >= 1")
    return s


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench: --device cuda: no CUDA device is available here (use --device cpu or auto)"
        )
    return torch.device(name)


# ---------------------------------------------------------------- one benchmark's results


def bench_environment(device: torch.device) -> dict:
    """runner.engine.provenance's environment and commit, plus what a benchmark on a shared machine
    needs besides."""
    return {
        **environment(device),
        "code": code_version(),
        "runner": getattr(runner, "__version__", None),
        "runner_path": str(Path(runner.__file__).resolve().parent),
        "hydra_loaded": any(m.split(".")[0] in ("hydra", "omegaconf") for m in sys.modules),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        # others' work on the machine
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


@contextmanager
def session(args, own: dict, positive=(), common=tuple(COMMON["cpu"]), runs=RUN_SETTINGS):
    """One benchmark: the device, its settings (`settings`), torch's threads, the environment
    printed and kept, a temporary folder for its Runs; (Bench, results) to fill, written to --out
    at the end. `runs`: what the Runs train with, for the results' settings."""
    t_start = time.perf_counter()
    device = pick_device(args.device)
    s = settings(args, device, own, positive, common)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(args.threads or usable)
    env, data_root = bench_environment(device), getattr(args, "data_root", None)
    results = {
        "env": env,
        "settings": {**s, "data": data_root or "synthetic", **(runs or {})},
    }
    print(
        f"bench: {env['device_name']} | torch {env['torch']} torchvision {env['torchvision']} cuda "
        f"{env['cuda']} cudnn {env['cudnn']} python {env['python']} | {env['cpu_count']} CPUs, "
        f"{env['torch_threads']} torch threads | commit "
        f"{(env['code']['commit'] or '?')[:10]}{' (dirty)' if env['code']['dirty'] else ''}",
        flush=True,
    )
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        data = data_config(s, data_root) if "n_train" in s else None  # None: the script's own
        yield Bench(s, device, data, Path(tmp), Clock(device), out), results
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["wall_s"] = time.perf_counter() - t_start
    save_json(results, out)
    print(f"bench: wrote {out} ({env['wall_s']:.0f} s)", flush=True)


def flat_header(results: dict) -> dict:
    """The first keys of every benchmark's flat `summary`: where and on what it was measured."""
    env = results["env"]
    return {
        "device": env["device"],
        "device_name": env["device_name"],
        "model": results["settings"]["model"],
    }
