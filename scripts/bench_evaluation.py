#!/usr/bin/env python
"""Time what a validation costs the trainer: runner.core.evaluation.evaluate over the validation
split with a Run's own evaluated loader (padded, one batch shape) and eval forward
(GraphedForward), and recalibrated_bn over the Run's trainer.bn_recalibrate training images; one Run
per execution path, each pass's first call (compile, capture) timed apart.

The Runs are built by engine.build.setup as the trainer builds them and not trained first: a pass
costs the same whatever the weights, and their first pass pays the eval forward's compile or
capture alone. Runs without hydra/omegaconf and without the package installed.

    python scripts/bench_evaluation.py                  # CPU: ResNet20v1, eager
    python scripts/bench_evaluation.py --device cuda    # ResNet56v2: eager, graphs, compile+graphs
    python scripts/bench_evaluation.py --device cuda --paths graphs --data-root DIR --passes 9
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

# on a bare machine neither runner nor these scripts are installed: both come from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts.*
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runner

import torch

from runner.core.evaluation import evaluate, recalibrated_bn
from runner.engine.run import Run
from scripts.bench_common import (
    PATHS,
    VAL_IMAGES,
    Bench,
    close,
    execution,
    flat_header,
    parser,
    paths_arg,
    session,
)

# timed passes after the first; the Runs' training batch (evaluation does not depend on it)
OWN = {
    "cpu": dict(passes=3, batch_size=32),
    "cuda": dict(passes=5, batch_size=128),
    "quick": dict(passes=1, batch_size=16),
}


def evaluation(b: Bench, run: Run, path: str) -> dict:
    """Seconds per pass of runner.core.evaluation.evaluate over the validation split with the Run's
    evaluated loader and eval forward, and per recalibration of every BatchNorm over the Run's
    training images; first passes apart."""
    t, loader, images = run.trainee, run.data.evals.val, run.data.recal_images

    def val_pass():
        # engine.validation's one host read
        torch.stack(evaluate(t.model, t.eval_forward, loader)).tolist()

    def recal():
        with recalibrated_bn(t.model, images, t.autocast):
            pass

    out = {
        "path": path,
        "execution": execution(run),
        "images": len(loader.y),
        "batch_size": loader.batch_size,
    }
    passes = {"validation": val_pass, "recalibration": recal if images is not None else None}
    for name, fn in passes.items():
        if fn is not None:
            out[name] = timed_passes(b, fn)
    v = out["validation"]
    v["images_per_s"] = out["images"] / v["seconds"]
    v[f"est_{VAL_IMAGES}_images_s"] = VAL_IMAGES * v["seconds"] / out["images"]
    if images is not None:
        out["recalibration"]["images"] = len(images)
    rc = out.get("recalibration", {}).get("seconds")
    print(
        f"evaluation {path:15s}: {out['images']} images at batch {out['batch_size']} in "
        f"{v['seconds']:.3f} s (est. {v[f'est_{VAL_IMAGES}_images_s']:.3f} s for {VAL_IMAGES}; "
        f"first pass {v['first_s']:.2f} s)   BN recalibration "
        f"{'-' if rc is None else f'{rc:.3f} s'}",
        flush=True,
    )
    return out


def timed_passes(b: Bench, fn) -> dict:
    """The first call apart, then the median of b.s['passes'] more (device synchronised)."""
    times = []
    for _ in range(b.s["passes"] + 1):
        t0 = b.clock()
        fn()
        times.append(b.clock() - t0)
    return {"first_s": times[0], "runs_s": times[1:], "seconds": statistics.median(times[1:])}


def summarize(results: dict) -> dict:
    """The flat figures the README's tables read, keyed by path."""
    rows = results["evaluation"]
    return {
        **flat_header(results),
        f"validation_{VAL_IMAGES}_images_s": {
            e["path"]: e["validation"][f"est_{VAL_IMAGES}_images_s"] for e in rows
        },
        "recalibration_s": {
            e["path"]: e["recalibration"]["seconds"] for e in rows if "recalibration" in e
        },
    }


def parse_args(argv=None):
    p = parser(__doc__, "bench_evaluation.json")
    paths_arg(p)
    p.add_argument("--passes", type=int, help="timed passes after the first (3 cpu, 5 cuda)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    common = ("model", "paths", "n_train", "n_val")  # one Run per path, its batch OWN's
    with session(parse_args(argv), OWN, ("passes",), common) as (b, results):
        s, results["evaluation"] = b.s, []
        print(f"bench: evaluation of {s['model']}, paths {s['paths']}, {s['passes']} passes")
        for path in s["paths"]:
            run = b.run(s["batch_size"], path, path, epochs=1)
            try:
                results["evaluation"].append(evaluation(b, run, path))
            finally:
                close(run)
            if PATHS[path][0]:
                torch._dynamo.reset()  # this Run's compiled forward is not needed again
            b.save(results)
        results["summary"] = summarize(results)
    return results


if __name__ == "__main__":
    main()
