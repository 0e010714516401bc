#!/usr/bin/env python
"""The GPU command: what it needs checked in one line, a compile probe, a preflight, the exactness
checks, then the measurements most valuable first, all under one deadline, with the results
rewritten after every stage (a run cut short keeps what it measured).

    make gpu [DATA=.gpu/cifar10-jpg.tar.gz] [DEADLINE=420]   # installs .gpu/wheels, then this
    python scripts/gpu.py --data cifar10-jpg.tar.gz --deadline 420
    python scripts/gpu.py --device cpu --quick --out /tmp/gpu   # the plumbing, tiny, on a CPU

First, before anything is written: every module the stages import (torch, torchvision, Hydra,
PyYAML, tensorboard's event writer, tqdm, pytest on CUDA, this package installed), the data
tarball and the CUDA device; whatever is missing is named in one line, with the fix (exit 2).

Then the stages, in this order, each a subprocess under its own limit cut to what is left of the
deadline; one that no longer fits is recorded as skipped. Expected seconds on an H100/H200 are
estimates from the H200 figures of docs/results/2026-11-28-h200, not measurements:
  stage          limit  expected
  compile_probe   90 s  20-60   scripts/compile_probe.py in a fresh process: ResNet8v1 compiled,
                                forward and backward. If it fails or runs out of time, every later
                                stage trains without torch.compile (trainer.compile=false; pytest
                                -m 'not compile') and the results say why. (A run would fall back
                                by itself, engine.execution, but each stage would pay the failed
                                compile first, and the preflight's default-path test would fail.)
  preflight      150 s  40-100  pytest -m gpu tests/test_gpu_preflight.py: the default path trains
                                a tiny ResNet for 2 epochs without falling back (one batch shape's
                                two training graphs, the eval forward captured, no recompilation
                                after epoch 1); a 2-run pack; a run continued with CUDA graphs from
                                an eager checkpoint; cuda:N. A failure skips every later stage;
                                running out of time does not.
  checks         120 s  40-80   pytest -m 'gpu and not compile' tests/test_gpu.py: the captured
                                step against the eager step bit for bit, recalibration, eval
                                forward, a capture that CUDA refuses falling back to the eager step
                                (the compile path's own check is the preflight's)
  default_cold   150 s  60-120  `python -m runner` as shipped (ResNet56v2, AdamW, batch 128, the
                                data given), --epochs epochs, a fresh trainer.compile_cache
  default_warm    90 s  30-60   the same again with the same cache: start-up from the caches
  bench          170 s  70-150  at batch 128, three benchmarks one after another: scripts/bench.py
                                (the loop of CUDA graphs vs compile + graphs, with the tutorial
                                loop), bench_evaluation.py (validation and recalibration times),
                                bench_pack.py (8 jobs packed vs sequential)
  bench_more    the rest        scripts/bench.py (eager and the tutorial loop at batch 128 and 64),
                                bench_evaluation.py (eager), bench_ops.py (kernel counts)
At the middle of these estimates the stages through bench take about 420 s with the unpacking,
the default deadline of 420 s; bench_more runs on what is left (a larger --deadline gives it
time). A stage of several commands runs each after the one before, whatever its outcome (each
measures something of its own), under the stage's one limit; it failed if one of them did. A
stage cut short by the deadline is recorded, not counted as a failure; exit 1 only when a stage
that ran failed or ran past its own limit (the probe excepted: it decides the path, it checks
nothing).

Writes OUT/gpu.json (every stage's command, status, seconds, figures and output tail) and
OUT/README.md (gpu_results.py: the figures as a table); OUT defaults to
docs/results/<date>-<card>/. The data is the image-folder CIFAR-10 as a tarball (--data);
without one, synthetic images (then every figure says so).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
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
# scripts.gpu_results and scripts.timing_harness: `python scripts/gpu.py` puts only scripts/ there
sys.path.insert(0, str(ROOT))

from scripts.gpu_results import bench_figures, json_figures, markdown, run_figures  # noqa: E402

# name: (its own limit in seconds, None = what is left; the least time worth starting it with)
BUDGET = {
    "compile_probe": (90, 10),
    "preflight": (150, 30),
    "checks": (120, 30),
    "default_cold": (150, 40),
    "default_warm": (90, 20),
    "bench": (170, 40),
    "bench_more": (None, 20),
}
WRITE_S = 5  # kept back from each stage's limit to write the results
# (module, what provides it): every stage's imports, on a bare torch + torchvision image
NEEDS = [
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("hydra", "hydra-core"),
    ("omegaconf", "omegaconf"),
    ("yaml", "PyYAML"),
    ("torch.utils.tensorboard", "tensorboard (with absl-py, protobuf)"),
    ("tqdm", "tqdm"),
    ("runner.configs", "this package (pip install --no-deps -e .)"),
]
NEEDS_CUDA = [("pytest", "pytest (with iniconfig, pluggy, pygments)")]  # the preflight, the checks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="tarball of the image-folder CIFAR-10 (train/<class>/*, test/…)")
    p.add_argument("--deadline", type=float, default=420.0, help="seconds for it all (default 420)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each default run (default 2)")
    p.add_argument("--out", help="results folder (default docs/results/<date>-<card>)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the plumbing")
    p.add_argument("--quick", action="store_true", help="tiny runs: the plumbing in seconds")
    args = p.parse_args(argv)
    if args.deadline <= 0 or args.epochs < 1:
        p.error("--deadline must be > 0 and --epochs >= 1")
    return args


def missing(args) -> list[tuple[str, str]]:
    """[(what would stop a stage before it measured anything, its fix)]."""
    out, gone = [], []
    for module, what in NEEDS + (NEEDS_CUDA if args.device == "cuda" else []):
        try:
            importlib.import_module(module)
        except Exception as e:  # absent, or present but broken (a dependency of its own missing)
            gone.append(what if isinstance(e, ModuleNotFoundError) else f"{what} ({e})")
    python = ".".join(platform.python_version_tuple()[:2])
    if gone:
        fix = f"`make gpu-wheels GPU_PYTHON={python}` on a machine with a package index carries "
        fix += "them in .gpu/wheels, which `make gpu` installs"
        if {"torch", "torchvision"} & {g.split(" ")[0] for g in gone}:
            fix += " (all but torch and torchvision: use the Python that has them)"
        out.append((f"not importable here (Python {python}): {', '.join(gone)}", fix))
    if args.data and not (Path(args.data).is_file() and tarfile.is_tarfile(args.data)):
        fix = "copy the image-folder tarball there (make gpu DATA=...)"
        out.append((f"--data {args.data} is not a tarball here", fix))
    if args.device == "cuda" and not any(g.split(" ")[0] == "torch" for g in gone):
        import torch

        if not torch.cuda.is_available():
            fix = "run it on a GPU machine, or `python scripts/gpu.py --device cpu --quick` "
            fix += "for its plumbing"
            out.append(("no CUDA device here (torch.cuda.is_available() is False)", fix))
    return out


def refusal(problems: list[tuple[str, str]]) -> str:
    """One line: what is missing, and how to get it."""
    what, fixes = "; ".join(p for p, _ in problems), "; ".join(f for _, f in problems)
    return f"gpu: nothing measured: {what}. Fix: {fixes}"


def environment(device: str) -> dict:
    """Card, driver, versions, commit and date: what a reader needs to place the figures."""
    import torch

    from runner.engine.provenance import code_version

    cuda = device == "cuda"
    driver = None
    if cuda and shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            text=True,
            capture_output=True,
            timeout=20,
        )
        lines = q.stdout.strip().splitlines() if q.returncode == 0 else []
        driver = lines[0] if lines else None
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
    """The data block of the results: the image folder unpacked from `tarball`, or synthetic."""
    if not tarball:
        return {"name": "synthetic", "root": None, "tarball": None}
    digest = hashlib.sha256(Path(tarball).read_bytes()).hexdigest()
    with tarfile.open(tarball) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)
    folders = sorted(into.rglob("train"))
    root = next((p.parent for p in folders if p.is_dir() and (p.parent / "test").is_dir()), into)
    name = Path(tarball).name
    return {"name": "image_folder", "root": str(root), "tarball": name, "sha256": digest}


def commands(cmd: list) -> list[list[str]]:
    """A stage's commands: `cmd` is one command (a list of str) or a list of them."""
    return [cmd] if cmd and isinstance(cmd[0], str) else cmd


def command_line(cmd: list) -> str:
    """A stage's commands as one line, as a shell would run them one after another."""
    return " ; ".join(" ".join(c) for c in commands(cmd))


class Stages:
    """Runs each stage as a subprocess within its budget (BUDGET) and what is left of the deadline,
    and rewrites the results after each."""

    def __init__(self, results: dict, out: Path, deadline: float):
        self.results, self.out, self.end = results, out, time.monotonic() + deadline

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, name: str, cmd: list, env: dict | None = None, figures=None) -> dict:
        """`cmd` (a command, or a list of commands run one after another) under the stage's limit,
        or skipped when less than its need is left; `figures()` reads what it measured, saved with
        it."""
        own, need = BUDGET[name]
        limit = self.left() - WRITE_S if own is None else min(own, self.left() - WRITE_S)
        stage = {"command": command_line(cmd), "limit_s": round(max(limit, 0), 1)}
        self.results["stages"][name] = stage
        if limit < need:
            left = max(self.left(), 0)
            return self.skip(name, f"{left:.0f} s left of the deadline, it needs {need:.0f} s")
        print(f"gpu: stage {name} (at most {limit:.0f} s): {stage['command']}", flush=True)
        tick = time.monotonic()
        try:
            exits, tail = self.run_all(commands(cmd), env, tick + limit)
            stage["exit"] = next((e for e in exits if e), 0)
            stage["status"] = "passed" if stage["exit"] == 0 else "failed"
        except subprocess.TimeoutExpired as e:
            cut = own is None or limit < own  # the deadline's end, not the stage's own limit
            stage["exit"] = None
            stage["status"] = "cut short by the deadline" if cut else "out of time"
            tail = e.output
        stage["seconds"] = round(time.monotonic() - tick, 1)
        stage["output_tail"] = tail[-3000:]
        if figures is not None:
            stage["figures"] = figures()
        print(tail[-3000:], flush=True)
        return self.save(name, stage)

    @staticmethod
    def run_all(cmds: list[list[str]], env: dict | None, end: float) -> tuple[list[int], str]:
        """Each command until `end` (time.monotonic()), whatever the one before returned: their
        exit codes and output together. Past `end`, TimeoutExpired with the output so far."""
        env, exits, out = {**os.environ, **(env or {})}, [], ""
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in cmds:
            try:
                r = subprocess.run(cmd, cwd=ROOT, env=env, timeout=end - time.monotonic(), **pipes)
            except subprocess.TimeoutExpired as e:
                cut = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
                raise subprocess.TimeoutExpired(cmd, e.timeout, output=out + (cut or "")) from None
            exits.append(r.returncode)
            out += r.stdout
        return exits, out

    def skip(self, name: str, why: str) -> dict:
        stage = self.results["stages"].setdefault(name, {})
        stage["status"] = f"skipped: {why}"
        return self.save(name, stage)

    def failed(self) -> list[str]:
        """The stages that failed or ran past their own limit; the probe's outcome is a decision."""
        bad = ("failed", "out of time")
        st = self.results["stages"]
        return [k for k, v in st.items() if k != "compile_probe" and v.get("status") in bad]

    def save(self, name: str, stage: dict) -> dict:
        # it imports torch: only once `missing` found it
        from scripts.timing_harness import save_json

        print(f"gpu: {name}: {stage['status']}", flush=True)
        save_json(self.results, self.out / "gpu.json")
        (self.out / "README.md").write_text(markdown(self.results), encoding="utf-8")
        return stage


def compile_verdict(stage: dict) -> tuple[bool, str]:
    """(whether the later stages may compile, the sentence the results give)."""
    f, status = stage.get("figures") or {}, stage["status"]
    if status == "passed":
        return True, f"works here: the probe compiled {f.get('model')} in {f.get('seconds')} s"
    off = "not used: every later stage ran with trainer.compile=false"
    if status == "failed":
        return False, f"{off}; the probe failed: {f.get('error') or 'exit ' + str(stage['exit'])}"
    if status.startswith("skipped"):
        return False, f"{off}; the probe did not run ({status})"
    return False, f"{off}; the probe did not finish in {stage['limit_s']:.0f} s ({status})"


def cli_run(data: dict, epochs: int, run_dir: Path, cache: Path, args, compiled: bool) -> list:
    """`python -m runner` as a user types it: the shipped defaults, the data, a compile cache."""
    cmd = [sys.executable, "-m", "runner", f"hydra.run.dir={run_dir}"]
    cmd += [f"trainer.compile_cache={cache}", "trainer.progress=false"]
    cmd += [f"trainer.device={args.device}"]
    cmd += [] if compiled else ["trainer.compile=false"]
    cmd += ["data=image_folder", f"data.root={data['root']}"] if data["root"] else []
    if args.quick:  # ResNet20v1, one short epoch (on synthetic images: a few of them)
        cmd += [] if data["root"] else ["data=synthetic", "data.n_train=256", "data.n_val=100"]
        cmd += ["model=resnet20v1", "model.bn_momentum=0.1", "epochs=1", "batch_size=32"]
        return cmd + ["trainer.bn_recalibrate=64"]
    return cmd + [f"epochs={epochs}", "batch_size=128"]


def bench_commands(args, data: dict, out: Path, more: bool, compiled: bool) -> list[list[str]]:
    """The benchmarks of the stage bench (more=False: the fast paths' loop, their evaluation, a
    pack of 8) or bench_more (the eager path and the tutorial loop at both batch sizes, its
    evaluation, kernel counts), each writing OUT/<script>.json."""
    quick = ["--quick", "--threads", "1"] if args.quick else []
    # quick: the benchmarks' few synthetic images
    real = ["--data-root", data["root"]] if data["root"] and not args.quick else []

    def script(name: str, *flags: str) -> list[str]:
        cmd = [sys.executable, str(ROOT / "scripts" / f"{name}.py"), "--device", args.device]
        return cmd + [*quick, *flags, "--out", str(out / f"{name}.json")]

    batches = "16" if args.quick else ("128,64" if more else "128")
    if more:
        cmds = [script("bench", *real, "--paths", "eager", "--batch-sizes", batches)]
        cmds += [script("bench_evaluation", *real, "--paths", "eager")]
        # kernel counts, as before without --quick: the plumbing's run skips the profiler
        return cmds + [script("bench_ops", *real)] * (not args.quick)
    paths = "eager" if args.device == "cpu" else "graphs,compile+graphs" if compiled else "graphs"
    return [
        script("bench", *real, "--paths", paths, "--batch-sizes", batches),
        script("bench_evaluation", *real, "--paths", paths),
        script("bench_pack", "--jobs", "2" if args.quick else "8", "--batch-size", batches),
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    problems = missing(args)
    if problems:
        print(refusal(problems), file=sys.stderr)
        return 2
    env = environment(args.device)
    default = ROOT / "docs" / "results" / f"{env['date'][:10]}-{card_slug(env['card'])}"
    out = Path(args.out) if args.out else default
    out.mkdir(parents=True, exist_ok=True)
    results = {"env": env, "deadline_s": args.deadline, "data": None, "stages": {}}
    st = Stages(results, out, args.deadline)  # the deadline counts from here: unpacking is in it
    with tempfile.TemporaryDirectory(prefix="runner_gpu_") as tmp:
        results["data"] = unpack(args.data, Path(tmp) / "data")
        stages(args, st, results["data"], Path(tmp))
    bad = st.failed()
    verdict = f"failed: {', '.join(bad)}" if bad else "every stage that ran passed"
    print(f"gpu: wrote {out / 'gpu.json'} and {out / 'README.md'}; {verdict}", flush=True)
    print(f"gpu: torch.compile {results['compile']['note']}", flush=True)
    return 1 if bad else 0


def stages(args, st: Stages, data: dict, tmp: Path) -> None:
    """Every stage in BUDGET's order; the preflight's failure skips the rest."""
    py, cuda = sys.executable, args.device == "cuda"
    probed = tmp / "probe_cache"  # the probe's compiled ResNet8v1, which the preflight trains
    probe = [py, str(ROOT / "scripts" / "compile_probe.py"), "--device", args.device]
    probe += ["--out", str(tmp / "probe.json")] + ["--quick"] * args.quick
    warm = {"TORCHINDUCTOR_CACHE_DIR": str(probed)}
    stage = st.run("compile_probe", probe, warm, figures=lambda: json_figures(tmp / "probe.json"))
    compiled, note = compile_verdict(stage)
    st.results["compile"] = {"probe": stage["status"], "used": compiled, "note": note}
    st.save("torch.compile", {"status": note})
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"]
    if not cuda:
        for name in ("preflight", "checks"):
            st.results["stages"][name] = {"status": "skipped: no CUDA (it needs a GPU)"}
    else:
        marks = "gpu" if compiled else "gpu and not compile"
        pre = st.run("preflight", [*pytest, "-m", marks, "-x", "tests/test_gpu_preflight.py"], warm)
        if pre["status"] == "failed":  # a wrong result, not a slow one: nothing after is worth it
            for name in list(BUDGET)[list(BUDGET).index("preflight") + 1 :]:
                st.skip(name, "the preflight failed")
            return
        st.run("checks", [*pytest, "-m", "gpu and not compile", "tests/test_gpu.py"], warm)
    cache = tmp / "compile_cache"
    for name in ("default_cold", "default_warm"):
        cmd = cli_run(data, args.epochs, tmp / name, cache, args, compiled)
        st.run(name, cmd, figures=lambda d=tmp / name: run_figures(d))
    cached = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}  # the caches the default runs filled
    cmds = bench_commands(args, data, tmp / "bench", more=False, compiled=compiled)
    st.run("bench", cmds, cached, figures=lambda: bench_figures(tmp / "bench"))
    cmds = bench_commands(args, data, tmp / "bench_more", more=True, compiled=compiled)
    st.run("bench_more", cmds, figures=lambda: bench_figures(tmp / "bench_more"))


if __name__ == "__main__":
    raise SystemExit(main())
