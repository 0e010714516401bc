"""The runner's CLI against a tutorial loop (scripts/tutorial_loop.py), each in its own process, on
the same model, batch size and number of training images, in interleaved repeats.

    python scripts/cli_vs_tutorial.py --repeats 3 --out cli_vs_tutorial.json

Each repeat runs the CLI (`python -m runner model=M data=synthetic data.n_train=N data.n_val=500
epochs=1 batch_size=B trainer.device=cpu`) and reads the `images_per_s` its summary.json records,
then runs the tutorial loop and reads its own; the order alternates between repeats so a slow spell
of the machine falls on both. It prints every pair, the median of each and its range, and the
median ratio CLI / tutorial (> 1: the CLI is faster), and the minor page faults each whole process
took (its start-up, and the CLI's validation, included); --out keeps them as JSON with the machine,
versions, commit and load they were measured on."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from runner.engine.provenance import code_version, environment  # noqa: E402


def faulted(cmd: list[str], **kw) -> tuple[subprocess.CompletedProcess, int]:
    """Run `cmd`; also return the minor page faults it and the processes it waited for took (a
    page touched for the first time since it was mapped: what glibc's mmap and trim cost)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return r, resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before


def cli(args, folder: Path) -> dict:
    cmd = [sys.executable, "-m", "runner", f"model={args.model}", "data=synthetic"]
    cmd += [f"data.n_train={args.n_train}", "data.n_val=500", "epochs=1"]
    cmd += [f"batch_size={args.batch_size}", "trainer.device=cpu", "trainer.progress=false"]
    cmd += [f"hydra.run.dir={folder}"]
    r, faults = faulted(cmd, cwd=folder.parent)
    if r.returncode:
        raise SystemExit(f"cli_vs_tutorial: the CLI failed:\n{r.stderr[-3000:]}")
    s = json.loads((folder / "summary.json").read_text())
    keep = ("images_per_s", "images_per_s_overall", "env")  # env: the CLI's, its allocator's too
    return {**{k: s[k] for k in keep}, "minor_faults": faults}


def tutorial(args) -> dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "tutorial_loop.py"), "--model", args.model]
    cmd += ["--batch-size", str(args.batch_size), "--n-train", str(args.n_train)]
    cmd += ["--workers", str(args.workers)]
    r, faults = faulted(cmd)
    if r.returncode:
        raise SystemExit(f"cli_vs_tutorial: the tutorial loop failed:\n{r.stderr[-3000:]}")
    return {**json.loads(r.stdout.splitlines()[-1]), "minor_faults": faults}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet20v2")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=3072)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="the tutorial's DataLoader workers")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = p.parse_args(argv)
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            load = os.getloadavg()[0]
            order = ("cli", "tutorial") if i % 2 == 0 else ("tutorial", "cli")
            got = {}
            for which in order:
                folder = Path(tmp) / f"run{i}"
                got[which] = cli(args, folder) if which == "cli" else tutorial(args)
            ratio = got["cli"]["images_per_s"] / got["tutorial"]["images_per_s"]
            if i:  # the first repeat's keeps the machine's description for all
                got["cli"].pop("env")
            pairs.append({"order": order, "loadavg_1min": load, **got, "ratio": ratio})
            print(
                f"repeat {i}: CLI {got['cli']['images_per_s']:.0f} img/s, tutorial "
                f"{got['tutorial']['images_per_s']:.0f} img/s, ratio {ratio:.2f} (load {load:.2f})"
            )
    out = {
        "command": " ".join(["python scripts/cli_vs_tutorial.py", *(argv or sys.argv[1:])]),
        "model": args.model,
        "batch_size": args.batch_size,
        "n_train": args.n_train,
        "repeats": pairs,
        "cli_images_per_s": spread([r["cli"]["images_per_s"] for r in pairs]),
        "tutorial_images_per_s": spread([r["tutorial"]["images_per_s"] for r in pairs]),
        "ratio": spread([r["ratio"] for r in pairs]),
        # whole processes (start-up, validation and the DataLoader's workers included)
        "cli_minor_faults": spread([r["cli"]["minor_faults"] for r in pairs]),
        "tutorial_minor_faults": spread([r["tutorial"]["minor_faults"] for r in pairs]),
        "code": code_version(),
        "env": {**environment("cpu"), **pairs[0]["cli"]["env"]},
        "date": time.strftime("%Y-%m-%d"),
    }
    r, c, t = out["ratio"], out["cli_images_per_s"], out["tutorial_images_per_s"]
    print(
        f"median of {args.repeats}: CLI {c['median']:.0f} img/s ({c['min']:.0f}-{c['max']:.0f}), "
        f"tutorial {t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f}), ratio {r['median']:.2f} "
        f"({r['min']:.2f}-{r['max']:.2f}): the "
        + ("CLI" if r["median"] >= 1 else "tutorial loop")
        + " is faster"
    )
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
