#!/usr/bin/env python
"""Count the device work of one training step: torch.profiler over single steps of the runner's
eager loop (runner.engine.loop.loop, as it ships) and of the tutorial loop of scripts/bench.py on
the same model and optimizer, and what each issues that the other does not. CUDA: kernel launches
(kernels, copies, fills), each under the aten op that made it; CPU: the aten ops that would be
kernels, with the Run set up as CUDA runs it as far as a CPU allows (bf16 autocast, channels_last,
fused Adam). A log point's extra work is shown apart. Runs without hydra/omegaconf and without the
package installed.

    python scripts/bench_ops.py                     # CPU: ResNet56v2, batch 8
    python scripts/bench_ops.py --device cuda       # ResNet56v2, batch 128
    python scripts/bench_ops.py --quick --device cpu --model resnet56v2
"""

from __future__ import annotations

import functools
import statistics
import sys
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path

# on a bare machine neither runner nor these scripts are installed: both come from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts.*
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runner

import torch

from runner.engine import build
from scripts.bench import LoopSteps, TutorialSteps, reference_loader
from scripts.bench_common import Bench, close, execution, flat_header, parser, session

# the counts do not depend on the batch: a small one on a CPU, the study's on CUDA
OWN = {
    "cpu": dict(model="resnet56v2", batch_size=8),
    "cuda": dict(model="resnet56v2", batch_size=128),
    "quick": dict(model="resnet20v1", batch_size=4),
}

# aten ops that only allocate, view or reshape metadata: no kernel on any device
NO_KERNEL = frozenset(
    "aten::" + n
    for n in (
        "empty empty_strided empty_like view as_strided _reshape_alias reshape t transpose expand "
        "expand_as permute detach alias unsqueeze squeeze select slice narrow unbind split chunk "
        "flatten view_as _unsafe_view lift lift_fresh as_strided_ resize_ set_ resolve_conj "
        "resolve_neg contiguous to _to_copy item result_type is_nonzero"
    ).split()
)
ONE_LAUNCH = ("aten::_foreach_", "aten::_fused_")  # multi-tensor: on a GPU one kernel per chunk
# host → device submissions
LAUNCHES = frozenset(
    "cudaLaunchKernel cudaLaunchKernelExC cuLaunchKernel cuLaunchKernelEx cudaMemcpyAsync "
    "cudaMemsetAsync cudaGraphLaunch".split()
)
ROOT_PREFIX = "autograd::engine::evaluate_function: "


def _where(op, outer) -> str:
    """'op < outermost op': the op and the top-level call it belongs to (a module's op, a backward
    node, the optimizer's step)."""
    return f"{op.name} < {outer.name.replace(ROOT_PREFIX, 'backward ')}"


def _outermost(e):
    while e.cpu_parent is not None:
        e = e.cpu_parent
    return e


def _compute_ops(e) -> list:
    """The ops of e's subtree that would be kernels: the innermost ones that compute, a multi-tensor
    op as one."""
    if e.name.startswith(ONE_LAUNCH):
        return [e]
    inner = [op for c in e.cpu_children for op in _compute_ops(c)]
    if inner:
        return inner
    return [e] if e.name.startswith("aten::") and e.name not in NO_KERNEL else []


def device_work(events, cuda: bool) -> Counter:
    """{'op < outermost op': count} for the events of one profiled step. CUDA: every launch the host
    makes (kernels, copies, fills), under the innermost aten op that made it. CPU: the aten ops that
    would be kernels on a GPU (`_compute_ops`); allocation and view ops are not counted."""
    out = Counter()
    for e in events:
        if cuda and e.name in LAUNCHES:
            op = e.cpu_parent
            while op is not None and not op.name.startswith("aten::") and op.cpu_parent is not None:
                op = op.cpu_parent
            out[_where(op, _outermost(e)) if op is not None else e.name] += 1
        elif not cuda and e.cpu_parent is None:
            for op in _compute_ops(e):
                out[_where(op, e)] += 1
    return out


def profile_step(fn, cuda: bool, device_side: list | None = None) -> Counter:
    """device_work of one call of fn; on CUDA also appends to `device_side` how many kernels, copies
    and fills the GPU ran (a check on the launch count that does not depend on how the profiler
    nests the host's events)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=False) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    if cuda and device_side is not None:
        device_side.append(
            sum(getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA for e in events)
        )
    return device_work(events, cuda)


def _mean(counts: list[Counter]) -> dict:
    keys = set().union(*counts)
    return {k: round(sum(c[k] for c in counts) / len(counts), 2) for k in sorted(keys)}


def op_counts(b: Bench) -> dict:
    """Per training step: the device work of the runner's eager loop (runner.engine.loop.loop, as it
    ships) and of the tutorial loop on the same model and optimizer, and what each issues that the
    other does not. Off CUDA the Run takes CUDA's settings as far as CPU allows: bf16 autocast,
    channels_last, fused Adam. The tutorial's batch is fetched before its step is profiled: its
    per-image transforms run in DataLoader workers, not on the device."""
    s, cuda = b.s, b.device.type == "cuda"
    bs = s["batch_size"]
    every = 5  # a log point every 5 steps: its extra work is shown apart
    like_cuda = {} if cuda else dict(precision="bf16", channels_last=True)
    cfg = b.config(bs, "eager", epochs=2, log_every=every, val_every=10**9, **like_cuda)
    with nullcontext() if cuda else fused_optimizer():  # fused on CUDA already
        run = build.setup(cfg, b.subfolder("op_counts"), data_cache=b.cache)
    steps = LoopSteps(run)
    for _ in range(3):  # warm-up: allocations, autotuning, the optimizer's state
        steps.step()
    while run.state.step % every:  # to just after a log point
        steps.step()
    gpu_runner, gpu_tutorial = [], []
    plain = [profile_step(steps.step, cuda, gpu_runner) for _ in range(every - 1)]
    at_log_point = profile_step(steps.step, cuda)
    tutorial = TutorialSteps(run, reference_loader(b, bs, workers=0))
    batches = [next(tutorial.batches) for _ in range(4)]
    tutorial.train(*batches[0])
    tut = [
        profile_step(lambda xy=xy: tutorial.train(*xy), cuda, gpu_tutorial) for xy in batches[1:]
    ]
    tutorial.close()
    close(run)
    runner_step, tutorial_step = _mean(plain), _mean(tut)
    extra = {k: v for k, v in _mean([at_log_point - Counter(runner_step)]).items() if v}
    keys = set(runner_step) | set(tutorial_step)
    diff = {k: round(runner_step.get(k, 0) - tutorial_step.get(k, 0), 2) for k in sorted(keys)}
    out = {
        "device": b.device.type,
        "unit": "kernel launches" if cuda else "aten ops that would be kernels",
        "model": s["model"],
        "batch_size": bs,
        "execution": execution(run),
        "optimizer": "fused Adam" if run.trainee.opt.fused else "Adam",
        "runner_per_step": round(sum(runner_step.values()), 2),
        "tutorial_per_step": round(sum(tutorial_step.values()), 2),
        "log_step_extra": round(sum(extra.values()), 2),
        "log_step_extra_ops": extra,
        "gpu_events_per_step": {
            "runner": statistics.mean(gpu_runner),
            "tutorial": statistics.mean(gpu_tutorial),
        }
        if cuda
        else None,
        "runner_only": {k: v for k, v in diff.items() if v > 0},
        "tutorial_only": {k: -v for k, v in diff.items() if v < 0},
        "runner": runner_step,
        "tutorial": tutorial_step,
    }
    _print_counts(out)
    return out


def _print_counts(out: dict) -> None:
    print(
        f"op counts ({out['unit']}, {out['model']} batch {out['batch_size']}, "
        f"{out['execution']['precision']}, channels_last {out['execution']['channels_last']}, "
        f"{out['optimizer']}): runner {out['runner_per_step']:g} per step "
        f"(+{out['log_step_extra']:g} at each log point), tutorial {out['tutorial_per_step']:g}",
        flush=True,
    )
    for side in ("runner_only", "tutorial_only"):
        for k, v in sorted(out[side].items(), key=lambda kv: -kv[1]):
            print(f"  {side:13s} {v:7g}  {k}", flush=True)


@contextmanager
def fused_optimizer():
    """engine.build makes the Run's Optimizer with torch's fused kernels, as it does on CUDA (on a
    CPU torch's Adam defaults to a loop over tensors). Patched where setup looks it up, so that the
    step, the log points and the probes all hold the one fused optimizer."""
    made = build.Optimizer
    build.Optimizer = functools.partial(made, fused=True)
    try:
        yield
    finally:
        build.Optimizer = made


def parse_args(argv=None):
    p = parser(__doc__, "bench_ops.json", models="resnet56v2 (resnet20v1 with --quick)")
    p.add_argument("--batch-size", type=int, help="default 8 on cpu, 128 on cuda")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    common = ("n_train", "n_val")  # the eager path, one batch size: OWN's
    with session(parse_args(argv), OWN, ("batch_size",), common) as (b, results):
        results["op_counts"] = counts = op_counts(b)
        keep = ("runner_per_step", "tutorial_per_step", "unit")
        ops = dict(zip(("runner", "tutorial", "unit"), (counts[k] for k in keep)))
        results["summary"] = {**flat_header(results), "ops_per_step": ops}
    return results


if __name__ == "__main__":
    main()
