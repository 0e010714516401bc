#!/usr/bin/env python
"""The GPU command: a preflight that stops everything if it fails, then the measurements most valuable first, all
under one deadline, with the results file rewritten after every stage (a run cut short keeps what it measured).

    make gpu DATA=cifar10-jpg.tar.gz [DEADLINE=480]        # installs the package and .gpu/wheels, then this
    python scripts/gpu.py --data cifar10-jpg.tar.gz --deadline 480
    python scripts/gpu.py --device cpu --quick --out /tmp/gpu      # the plumbing, tiny, on a CPU (the tests)

Stages (each a subprocess under what is left of the deadline; a stage that no longer fits is recorded as skipped):
  preflight     pytest -m gpu tests/test_gpu_preflight.py (≤ 60 s): a tiny ResNet on the default path for 2 epochs
                with one training graph, the eval forward captured, finite losses and no recompilation after epoch
                1; a 2-run pack; a run continued with CUDA graphs from an eager checkpoint; an explicit device index
  default_cold  `python -m runner` as shipped (ResNet56v2, AdamW, batch 128, the data given) for --epochs epochs,
                with trainer.compile_cache in a fresh folder: start-up with nothing compiled
  default_warm  the same command again, the same cache: start-up from torch.compile's caches
  bench         scripts/bench.py at batch 128: CUDA graphs vs compile + CUDA graphs, validation and BatchNorm
                recalibration times, and an 8-job packed sweep vs the same jobs one after another
  checks        pytest -m gpu tests/test_gpu.py: the captured step against the eager step bit for bit, and the rest
  bench_more    scripts/bench.py: eager and the tutorial DataLoader loop at batch 128 and 64, kernel counts
Writes OUT/gpu.json (every stage's command, exit status, seconds and figures) and OUT/README.md (the figures as a
table); OUT defaults to docs/results/<date>-<card>/. The data is the image-folder CIFAR-10 as a tarball (--data);
without one, synthetic images (then every figure says so).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(1, str(ROOT / "src"))  # provenance only; the runs themselves use the installed package

from timing_harness import save_json  # noqa: E402

PREFLIGHT_S = 60


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="tarball of the image-folder CIFAR-10 (train/<class>/*, test/<class>/*)")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds for the whole command (default 480)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each default run (default 3)")
    p.add_argument("--out", help="results folder (default docs/results/<date>-<card>)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the plumbing, with --quick")
    p.add_argument("--quick", action="store_true", help="tiny runs: the plumbing in seconds")
    args = p.parse_args(argv)
    if args.deadline <= 0 or args.epochs < 1:
        p.error("--deadline must be > 0 and --epochs >= 1")
    return args


def environment(device: str) -> dict:
    """Card, driver, versions, commit and date: what a reader needs to place the figures."""
    import torch

    from runner.engine.provenance import code_version

    cuda = device == "cuda"
    driver = None
    if cuda and shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], text=True,
                           capture_output=True, timeout=20)  # fmt: skip
        driver = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "card": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "code": code_version(),
    }


def card_slug(card: str) -> str:
    """'NVIDIA H200' → 'h200': the results folder's name after the date."""
    return re.sub(r"[^a-z0-9]+", "-", card.lower().replace("nvidia", "")).strip("-") or "gpu"


def unpack(tarball: str | None, into: Path) -> dict:
    """The data block of the results: the image folder unpacked from `tarball`, or synthetic images."""
    if not tarball:
        return {"name": "synthetic", "root": None, "tarball": None}
    digest = hashlib.sha256(Path(tarball).read_bytes()).hexdigest()
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data") if sys.version_info >= (3, 12) else tar.extractall(into)
    root = next((p.parent for p in sorted(into.rglob("train")) if p.is_dir() and (p.parent / "test").is_dir()), into)
    return {"name": "image_folder", "root": str(root), "tarball": Path(tarball).name, "sha256": digest}


class Stages:
    """Runs each stage as a subprocess under what is left of the deadline and rewrites the results after each."""

    def __init__(self, results: dict, out: Path, deadline: float):
        self.results, self.out, self.end = results, out, time.monotonic() + deadline

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, name: str, cmd: list[str], cap: float, need: float, env: dict | None = None, figures=None) -> dict:
        """`cmd` with at most `cap` seconds (less if the deadline is nearer); skipped below `need` seconds left.
        `figures()` reads what the stage measured, saved with it."""
        limit = min(cap, self.left() - 5)  # 5 s to write the results
        stage = {"command": " ".join(cmd), "limit_s": round(max(limit, 0), 1)}
        self.results["stages"][name] = stage
        if limit < need:
            stage["status"] = f"skipped: {max(self.left(), 0):.0f} s left of the deadline, it needs {need:.0f} s"
            return self._save(name, stage)
        print(f"gpu: stage {name} (at most {limit:.0f} s): {stage['command']}", flush=True)
        tick = time.monotonic()
        try:
            r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=limit, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
            stage["exit"], tail = r.returncode, r.stdout
            stage["status"] = "passed" if r.returncode == 0 else "failed"
        except subprocess.TimeoutExpired as e:
            stage["exit"], stage["status"] = None, "out of time"
            tail = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        stage["seconds"] = round(time.monotonic() - tick, 1)
        stage["output_tail"] = tail[-3000:]
        if figures is not None:
            stage["figures"] = figures()
        print(tail[-3000:], flush=True)
        return self._save(name, stage)

    def _save(self, name: str, stage: dict) -> dict:
        print(f"gpu: stage {name}: {stage['status']}", flush=True)
        save_json(self.results, self.out / "gpu.json")
        (self.out / "README.md").write_text(markdown(self.results), encoding="utf-8")
        return stage


def cli_run(data: dict, epochs: int, run_dir: Path, cache: Path, quick: bool, device: str) -> list[str]:
    """`python -m runner` as a user types it: the shipped defaults, the data, a compile cache folder."""
    args = [sys.executable, "-m", "runner", f"hydra.run.dir={run_dir}", f"trainer.compile_cache={cache}",
            "trainer.progress=false", f"trainer.device={device}"]  # fmt: skip
    args += ["data=image_folder", f"data.root={data['root']}"] if data["root"] else []
    if quick:  # ResNet20v1, one short epoch (on synthetic images: a few of them)
        args += [] if data["root"] else ["data=synthetic", "data.n_train=256", "data.n_val=100"]
        return args + ["model=resnet20v1", "model.bn_momentum=0.1", "epochs=1", "batch_size=32",
                       "trainer.bn_recalibrate=64"]  # fmt: skip
    return args + [f"epochs={epochs}", "batch_size=128"]


def run_figures(run_dir: Path) -> dict:
    """What summary.json and metrics.jsonl say about a run's speed."""
    path = run_dir / "summary.json"
    if not path.exists():
        return {}
    s = json.loads(path.read_text())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keep = ("status", "images_per_s", "images_per_s_overall", "startup_s", "startup", "stall_s", "val_first_s", "val_s",
            "final_val_acc", "wall_time_s", "device", "path")  # fmt: skip
    out = {k: s.get(k) for k in keep}
    out["epoch_train_s"] = [r["epoch_train_s"] for r in epochs if "epoch_train_s" in r]
    out["epoch_s_est"] = 50_000 / s["images_per_s"] if s.get("images_per_s") else None
    return out


def bench_command(device: str, quick: bool, data: dict, out: Path, more: bool) -> list[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", device, "--out", str(out)]
    if quick:
        cmd += ["--quick", "--threads", "1"]
    if data["root"] and not quick:  # quick: the bench's few synthetic images (windows need more than a tiny folder)
        cmd += ["--data-root", data["root"]]
    if more:  # the eager path and the tutorial loop, both batch sizes, kernel counts
        return (
            cmd
            + ["--paths", "eager", "--batch-sizes", "16" if quick else "128,64", "--e2e-epochs", "0"]
            + (["--no-count-ops"] if quick else [])
        )
    paths = "eager" if device == "cpu" else "graphs,compile+graphs"
    return cmd + ["--paths", paths, "--batch-sizes", "16" if quick else "128", "--e2e-epochs", "0", "--no-count-ops",
                  "--pack", "2" if quick else "8"]  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu: no CUDA device here (torch.cuda.is_available() is False): run `make gpu` on a GPU machine, "
              "or `python scripts/gpu.py --device cpu --quick` for its plumbing", file=sys.stderr)  # fmt: skip
        return 2
    env = environment(args.device)
    out = Path(args.out) if args.out else ROOT / "docs" / "results" / f"{env['date'][:10]}-{card_slug(env['card'])}"
    out.mkdir(parents=True, exist_ok=True)
    results = {"env": env, "deadline_s": args.deadline, "data": None, "stages": {}}
    st = Stages(results, out, args.deadline)  # the deadline counts from here: unpacking is part of it
    with tempfile.TemporaryDirectory(prefix="runner_gpu_") as tmp:
        tmp = Path(tmp)
        results["data"] = unpack(args.data, tmp / "data")
        failed = stages(args, st, results["data"], tmp)
    print(f"gpu: wrote {out / 'gpu.json'} and {out / 'README.md'}", flush=True)
    return 1 if failed else 0


def stages(args, st: Stages, data: dict, tmp: Path) -> bool:
    """Every stage, most valuable first; returns whether the preflight or any stage failed."""
    py, cuda, q = sys.executable, args.device == "cuda", args.quick
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rA"]
    if cuda:
        pre = st.run("preflight", [*pytest, "-x", "tests/test_gpu_preflight.py"], PREFLIGHT_S, 10)
        if pre["status"] != "passed":
            return True
    else:
        st.results["stages"]["preflight"] = {"status": "skipped: no CUDA (it needs a GPU)"}
    cache, bench_json = tmp / "compile_cache", tmp / "bench.json"
    for name in ("default_cold", "default_warm"):
        cmd = cli_run(data, args.epochs, tmp / name, cache, q, args.device)
        st.run(name, cmd, 240, 20, figures=lambda d=tmp / name: run_figures(d))
    bench_env = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}  # the caches the default runs filled
    cmd = bench_command(args.device, q, data, bench_json, more=False)
    st.run("bench", cmd, 200, 30, bench_env, figures=lambda: _summary(bench_json))
    if cuda:
        st.run("checks", [*pytest, "tests/test_gpu.py"], 120, 30)
    more_json = tmp / "bench_more.json"
    cmd = bench_command(args.device, q, data, more_json, more=True)
    st.run("bench_more", cmd, 200, 30, figures=lambda: _summary(more_json))
    return any(s.get("status") in ("failed", "out of time") for s in st.results["stages"].values())


def _summary(path: Path) -> dict:
    """bench.py's flat figures and its pack row, if it got that far."""
    if not path.exists():
        return {}
    r = json.loads(path.read_text())
    return {"summary": r.get("summary"), "pack": r.get("pack"), "evaluation": r.get("evaluation")}


def _n(v, fmt: str = ",.0f", unit: str = "") -> str:
    return "not measured" if v is None else f"{format(v, fmt)}{unit}"


def markdown(results: dict) -> str:
    """The figures as a table: what the README's speed rows point to."""
    env, d, st = results["env"], results["data"], results["stages"]
    commit = (env["code"].get("commit") or "?")[:10] + (" (dirty)" if env["code"].get("dirty") else "")
    lines = [f"# `make gpu` on {env['card']}", "",
             f"{env['date']}; driver {env['driver']}, torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
             f"Python {env['python']}, {env['cpus']} CPUs; commit {commit}; data {d['name']}"
             + (f" ({d['tarball']}, sha256 {d['sha256'][:12]})" if d.get("tarball") else "")
             + f"; deadline {results['deadline_s']:.0f} s. Rerun: `make gpu DATA=...`; every figure below is in "
             "gpu.json with the command that measured it.", "",
             "| stage | status | seconds |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v.get('status')} | {v.get('seconds', '–')} |" for k, v in st.items()]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in figures(st).items()]
    return "\n".join(lines) + "\n"


def figures(st: dict) -> dict:
    """{what: value as text}: each figure named for exactly what it is."""
    out = {}
    for name, what in (("default_cold", "cold compile cache"), ("default_warm", "warm compile cache")):
        f = st.get(name, {}).get("figures") or {}
        out[f"default run ({what}): steady images/s"] = _n(f.get("images_per_s"))
        out[f"default run ({what}): s per 50k-image epoch, steady"] = _n(f.get("epoch_s_est"), ".2f", " s")
        out[f"default run ({what}): start-up"] = _n(f.get("startup_s"), ".1f", " s")
        out[f"default run ({what}): validation pass, after the first"] = _n(f.get("val_s"), ".3f", " s")
    b = (st.get("bench", {}).get("figures") or {}).get("summary") or {}
    for path, rates in (b.get("loop_images_per_s") or {}).items():
        for batch, rate in rates.items():
            out[f"loop, {path}, batch {batch}: images/s"] = _n(rate)
    for path, s in (b.get("validation_10000_images_s") or {}).items():
        out[f"validation of 10,000 images ({path})"] = _n(s, ".3f", " s")
    for path, s in (b.get("recalibration_s") or {}).items():
        out[f"BatchNorm recalibration ({path})"] = _n(s, ".4f", " s")
    pack = (st.get("bench", {}).get("figures") or {}).get("pack") or {}
    if pack:
        out[f"pack of {pack['k']}: aggregate images/s vs sequential"] = (
            f"{pack['pack_images_per_s']:,.0f} vs {pack['sequential_images_per_s']:,.0f} ({pack['ratio']:.2f}×)"
        )
    m = (st.get("bench_more", {}).get("figures") or {}).get("summary") or {}
    for batch, rate in (m.get("tutorial_images_per_s") or {}).items():
        out[f"tutorial DataLoader loop, batch {batch}: images/s"] = _n(rate)
    for batch, rate in ((m.get("loop_images_per_s") or {}).get("eager") or {}).items():
        out[f"loop, eager, batch {batch}: images/s"] = _n(rate)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
