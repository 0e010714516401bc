"""The CUDA paths train exactly like the eager loop. Tests marked `gpu` need a CUDA device and are
skipped elsewhere; on a GPU machine (the GPU command, `make gpu`, runs them right after its
preflight, all but the one marked `compile`, whose check is the preflight's own):

    python -m pytest -m gpu tests/test_gpu.py tests/test_gpu_preflight.py

Checks:
  step equivalence  each optimizer preset (adamw, adam_l2, sgdw, sgd_l2) with L2, decoupled decay
                    and both, in float64: the `EagerStep` (fused optimizer, as the eager trainer
                    builds it) against `GraphedStep(capture=True)` (capturable, as the graphed
                    trainer builds it), on batches of two shapes with a log point every third step
                    (per shape the plain step's graph and the log point's, each replayed): every
                    loss, d_t and ‖g‖ (at log points), weight, BatchNorm buffer and optimizer moment
                    equal (torch.equal), cuDNN deterministic.
  recalibration     a short captured run whose validations recalibrate BatchNorm every 3 steps
                    trains bit for bit like the same run validating once per epoch without
                    recalibration.
  eval forward      the captured validation forward (GraphedForward) gives exactly the eager
                    forward's logits.
  default path      compile + CUDA graphs over 3 epochs: after epoch 1 and its validation nothing is
                    compiled or recorded again (one batch shape's two training graphs, one eval
                    graph, no new compiled frame), and nothing fell back to a safer path.
  fallback          a capture that CUDA refuses (a host read inside the step) under the automatic
                    settings: the run goes on eagerly with the caller's stream current, no memory
                    left in the failed graph's pool, and every loss equal to the eager run's.
The unmarked tests run the same checks uncaptured on CPU (their plumbing, and that they can fail);
the fallback's plumbing is tests/engine/test_execution.py's, on faked CUDA calls.
"""

import json
import logging
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from gpu_runs import compiled_frames, drain, tiny_config

from runner.config import validate
from runner.core import loader as rdata
from runner.core.evaluation import evaluate
from runner.core.models import build_resnet
from runner.core.schedules import warm_restarts
from runner.core.step_plan import StepPlan, decoupled_rate
from runner.core.update_rule import Optimizer
from runner.data.synthetic import make_synthetic
from runner.engine import step as rstep
from runner.engine.execution import Execution, ExecutionPath
from runner.engine.records import read_metrics

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PRESETS = ("adamw", "adam_l2", "sgdw", "sgd_l2")
REGULARIZATION = {"l2": (1e-3, 0.0), "decoupled": (0.0, 0.05), "both": (1e-3, 0.05)}  # (λ₂, λ)
LR, SPE = 3e-3, 5
SHAPES = (
    [16] * 4 + [8]
) * 5  # 8 = an epoch's last, smaller batch: 3 warm-ups, its capture, then a replay
QUICK_SHAPES = [16, 16, 8, 16, 8]


class cudnn_flags:
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


# ---------------------------------------------------------------- step equivalence


def optimizer_kwargs(preset: str, reg: str) -> tuple[dict, float, str]:
    """configs/optimizer/PRESET.yaml's settings with the regularization's λ₂, for
    core.update_rule.Optimizer; and the decoupled λ with its convention, for the plan."""
    o = validate(compose_cfg(f"optimizer={preset}")).optimizer
    l2, wd = REGULARIZATION[reg]
    kw = dict(algorithm=o.algorithm, l2=l2)
    kw |= (
        dict(betas=tuple(o.betas), eps=o.eps)
        if o.algorithm == "adam"
        else dict(momentum=o.momentum, nesterov=o.nesterov)
    )
    return kw, wd, o.wd_scaling


def step_tables(schedule, wd: float, wd_scaling: str, n: int) -> tuple[list[float], list[float]]:
    """lr_t and d_t of steps 0..n-1 as core.step_plan lays them out."""
    rate = decoupled_rate(wd, wd_scaling, LR)
    etas = [schedule(k / SPE) for k in range(n)]
    return [LR * e for e in etas], [rate(k / SPE, e) if wd else 0.0 for k, e in enumerate(etas)]


def float64_batches(device, shapes):
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(b, 3, 32, 32, generator=gen, dtype=torch.float64).to(device),
            torch.randint(0, 10, (b,), generator=gen).to(device),
        )
        for b in shapes
    ]


def log_point(k: int) -> bool:
    return k % 3 == 0


def twin_runs(device, rule, batches, depth, tables=step_tables):
    """The eager step's and the graphed step's (loss, d_t, ‖g‖ at log points) per batch, models
    and optimizers."""
    # moves every step, restarts at step 5
    schedule, _ = warm_restarts(T_0=1.0, T_mult=2.0, eta_min=0.05)

    kw, wd, wd_scaling = rule

    def make(capturable):
        torch.manual_seed(0)
        # float64: nothing to round away
        model = build_resnet(depth, 1, 10, bn_momentum=0.1).double().to(device)
        return model, Optimizer(model, fused=True, capturable=capturable, **kw)

    def plan(lrs, ds):
        return StepPlan(None, wd, kw["l2"], None, lrs, ds, SPE)

    m1, o1 = make(capturable=False)  # what the eager trainer builds
    step = rstep.EagerStep(
        m1, o1, nullcontext(), plan(*step_tables(schedule, wd, wd_scaling, len(batches)))
    )
    eager = []
    for k, (x, y) in enumerate(batches):
        loss, _, norms, _ = step(x, y, k, log_point=log_point(k))
        eager.append((loss.item(), step.plan.d[k], norms is not None and norms.norm().item()))
    m2, o2 = make(capturable=device.type == "cuda")  # what the graphed trainer builds
    graphed_plan = plan(*tables(schedule, wd, wd_scaling, len(batches)))
    g = rstep.GraphedStep(m2, o2, nullcontext(), graphed_plan, capture=device.type == "cuda")
    graphed = []
    for k, (x, y) in enumerate(batches):
        loss, _, norms, _ = g(x, y, k, log_point=log_point(k))
        graphed.append((loss.item(), graphed_plan.d[k], norms is not None and norms.norm().item()))
    return (eager, m1, o1), (graphed, m2, o2, g)


def differences(a: dict, b: dict) -> dict:
    """{name: max |difference|} of the tensors that are not equal (at most 5)."""
    out = {}
    for k, v in a.items():
        if not torch.equal(v, b[k]) and len(out) < 5:
            out[k] = (v.double() - b[k].double()).abs().max().item()
    return out


def moments(opt: Optimizer) -> dict:
    return {f"{i}.{k}": v for i, p in enumerate(opt.params) for k, v in opt.inner.state[p].items()}


def step_equivalence(device, preset, reg, quick=False, tables=step_tables) -> dict:
    """Exact, not close: both paths take lr_t from Optimizer.lr_value and 1 − d_t from keep_value,
    and run the same kernels on the same inputs (cuDNN deterministic), so any difference is a bug.
    """
    batches = float64_batches(device, QUICK_SHAPES if quick else SHAPES)
    with cudnn_flags(deterministic=True, benchmark=False):
        (eager, m1, o1), (graphed, m2, o2, g) = twin_runs(
            device, optimizer_kwargs(preset, reg), batches, 8 if quick else 20, tables
        )
    return {
        "steps": len(batches),
        "graphs": len(g.graphs),
        "captures": g.captures,
        "counter": g.counter.item(),
        "steps_that_differ": [k for k, (a, b) in enumerate(zip(eager, graphed)) if a != b][:5],
        "weights_that_differ": differences(m1.state_dict(), m2.state_dict()),
        "moments_that_differ": differences(moments(o1), moments(o2)),
        "trained": eager[0][0] != eager[-1][0],
    }


def assert_equivalent(r: dict, graphs: int) -> None:
    """`graphs` batch shapes recorded, each as the plain step and the log point's."""
    assert r["graphs"] == graphs and r["captures"] == 2 * graphs, r
    assert r["counter"] == r["steps"] and r["trained"], r
    assert (
        not r["steps_that_differ"] and not r["weights_that_differ"] and not r["moments_that_differ"]
    ), r


@pytest.mark.parametrize("reg", sorted(REGULARIZATION))
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.gpu
@needs_cuda
def test_the_captured_step_equals_the_eager_step_bit_for_bit(preset, reg):
    # both batch shapes recorded and replayed
    assert_equivalent(step_equivalence(CUDA, preset, reg), graphs=2)


@pytest.mark.parametrize("preset,reg", [("adamw", "both"), ("sgd_l2", "l2")])
def test_the_step_equivalence_check_runs_uncaptured_on_cpu(preset, reg):
    assert_equivalent(step_equivalence(CPU, preset, reg, quick=True), graphs=0)


def test_the_step_equivalence_check_sees_a_different_update():
    """The check can fail: the graphed side built with another lr table is caught at its first
    step."""
    scaled = lambda *a: tuple([v * 1.5 for v in t] for t in step_tables(*a))  # noqa: E731
    r = step_equivalence(CPU, "adamw", "decoupled", quick=True, tables=scaled)
    assert r["steps_that_differ"][0] == 0 and r["weights_that_differ"]


# ---------------------------------------------------------------- recalibration, eval forward,
# default path


def recalibration_identity(device, folder: Path) -> tuple[list, list, dict]:
    """(step records of the run that recalibrates every 3 steps, of the run that does not, weight
    differences)."""
    # the check is about the captured step
    det = dict(deterministic=True, bn_recalibrate=256, compile=False)
    a = drain(tiny_config(device, val_every=3, **det), folder / "recal_every_3")
    b = drain(tiny_config(device, **{**det, "bn_recalibrate": 0}), folder / "no_recal")
    # the two runs flush (and add weight norms) at different steps
    keep = (
        "step",
        "train_loss",
        "lr",
        "decay",
    )
    steps = [
        [{k: r[k] for k in keep} for r in read_metrics(run.out.recorder.path) if "train_loss" in r]
        for run in (a, b)
    ]
    ta, tb = a.trainee, b.trainee
    weights = differences(ta.model.state_dict(), tb.model.state_dict()) | differences(
        moments(ta.opt), moments(tb.opt)
    )
    assert a.trainee.path.cuda_graphs is (device.type == "cuda")
    return steps[0], steps[1], weights


def eval_forward_equality(device) -> tuple[int, list, list, bool]:
    """(batches whose captured logits differ from the eager ones, evaluate() with each, whether it
    captured)."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_resnet(20, 1, 10).to(
        device, memory_format=torch.channels_last if cuda else torch.contiguous_format
    )
    model.eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if cuda else nullcontext()
    )
    splits = make_synthetic(n_train=20, n_val=450, seed=1)
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
    captured = rstep.GraphedForward(model, autocast, capture=cuda)
    eager = rstep.GraphedForward(model, autocast, capture=False)
    unequal = 0
    with cudnn_flags(benchmark=True):  # as the trainer runs
        for _ in range(2):
            for x, _y in loader.epoch(0):
                # a replay rewrites its output
                unequal += not torch.equal(eager(x).clone(), captured(x).clone())
        ev_eager = torch.stack(evaluate(model, eager, loader)).tolist()
        model.eval()
        ev_captured = torch.stack(evaluate(model, captured, loader)).tolist()
    return unequal, ev_eager, ev_captured, captured.graph is not None


def default_path(device, folder: Path) -> dict:
    """A 3-epoch run on the default settings, validating and recalibrating each epoch: its counts
    after epoch 1 and at the end (exact counts, no timing: a recompile or recapture of a new batch
    shape shows in them)."""
    seen = {}

    def after_step(run):
        if run.state.step == run.steps_per_epoch:
            graphed = run.trainee.graphed
            seen.update(
                frames=compiled_frames(),
                graphs=len(graphed.graphs) if graphed else 0,
                captures=graphed.captures if graphed else 0,
            )

    run = drain(
        tiny_config(device, epochs=3, bn_recalibrate=256), folder / "default_path", after_step
    )
    s = json.loads((run.out.run_dir / "summary.json").read_text())
    return {
        "execution": s["path"],
        "fallback": s["path_fallback"],
        "status": s["status"],
        "epochs": len([r for r in read_metrics(run.out.recorder.path) if "epoch_train_s" in r]),
        "graphs": len(run.trainee.graphed.graphs) if run.trainee.graphed else 0,
        "graphs_after_epoch_1": seen["graphs"],
        "captures": run.trainee.graphed.captures if run.trainee.graphed else 0,
        "captures_after_epoch_1": seen["captures"],
        "eval_captured": run.trainee.execution.forward.graph is not None,
        "frames": compiled_frames(),
        "frames_after_epoch_1": seen["frames"],
    }


@pytest.mark.gpu
@needs_cuda
def test_validations_that_recalibrate_batchnorm_leave_captured_training_bit_identical(tmp_path):
    a, b, weights = recalibration_identity(CUDA, tmp_path)
    assert a == b and not weights


@pytest.mark.gpu
@needs_cuda
def test_the_captured_validation_forward_gives_the_eager_logits_exactly():
    unequal, ev_eager, ev_captured, captured = eval_forward_equality(CUDA)
    assert captured and unequal == 0 and ev_eager == ev_captured


@pytest.mark.gpu
@pytest.mark.compile
@needs_cuda
def test_the_default_path_compiles_and_captures_once_and_never_stalls_after_the_first_epoch(
    tmp_path,
):
    r = default_path(CUDA, tmp_path)
    assert r["execution"]["compile"] is True and r["execution"]["cuda_graphs"] is True
    assert r["fallback"] is None, r
    assert r["status"] == "completed" and r["epochs"] == 3 and r["eval_captured"], r
    assert (
        r["graphs"] == r["graphs_after_epoch_1"] == 1 and r["frames"] == r["frames_after_epoch_1"]
    ), r
    assert r["captures"] == r["captures_after_epoch_1"] == 2, r


def test_recalibration_and_eval_forward_checks_run_on_cpu(tmp_path):
    a, b, weights = recalibration_identity(CPU, tmp_path)
    assert a == b and len(a) == 16 and not weights
    unequal, ev_eager, ev_captured, captured = eval_forward_equality(CPU)
    assert unequal == 0 and ev_eager == ev_captured and not captured


# ---------------------------------------------------------------- a capture that fails


def capture_fallback(device) -> dict:
    """8 steps of a float64 ResNet8 whose forward reads a value on the host (which CUDA refuses
    inside a capture) on CUDA graphs left automatic, against the same steps eagerly: what ran,
    the stream after each step, what is left in the failed graph's pool."""
    schedule, _ = warm_restarts(T_0=1.0, T_mult=2.0, eta_min=0.05)
    batches = float64_batches(device, [16] * 8)
    kw, wd, wd_scaling = optimizer_kwargs("adamw", "both")
    plan = StepPlan(None, wd, kw["l2"], None, *step_tables(schedule, wd, wd_scaling, 8), SPE)

    def make(capturable):
        torch.manual_seed(0)
        model = build_resnet(8, 1, 10, bn_momentum=0.1).double().to(device)
        return model, Optimizer(model, fused=True, capturable=capturable, **kw)

    cuda = device.type == "cuda"
    with cudnn_flags(deterministic=True, benchmark=False):
        m1, o1 = make(False)
        eager = rstep.EagerStep(m1, o1, nullcontext(), plan)
        expected = [eager(x, y, k, k % 3 == 0).loss.item() for k, (x, y) in enumerate(batches)]
        m2, o2 = make(cuda)
        forward = m2.forward
        m2.forward = lambda x: forward(x) * (x.sum().item() != 0)  # × 1: the same logits
        path = ExecutionPath(device, "fp32", False, None, cuda, False)
        auto = frozenset({"compile", "cuda_graphs"})
        ex = Execution(m2, o2, nullcontext(), plan, path, 0, auto, logging.getLogger("runner"))
        pool, streams, losses = getattr(ex.step, "pool", None), [], []
        for k, (x, y) in enumerate(batches):
            losses.append(ex.run_step(x, y, k, k % 3 == 0).loss.item())
            streams.append(
                not cuda or torch.cuda.current_stream(device) == torch.cuda.default_stream(device)
            )
    segments = torch.cuda.memory_snapshot() if cuda else []
    return {
        "moves": [(f.after_steps, f.failed, f.to.cuda_graphs) for f in ex.fallbacks],
        "reasons": [f.reason for f in ex.fallbacks],
        "caller_stream_current": all(streams),
        "pool_known": all("segment_pool_id" in seg for seg in segments),
        "pool_segments": [s for s in segments if tuple(s.get("segment_pool_id", ())) == pool],
        "same_losses": losses == expected,
        "steps_that_differ": [k for k, (a, b) in enumerate(zip(losses, expected)) if a != b],
    }


@pytest.mark.gpu
@needs_cuda
def test_a_capture_that_cuda_refuses_falls_back_with_the_stream_and_memory_back():
    r = capture_fallback(CUDA)
    assert r["moves"] == [(3, "capture", False)], r
    assert r["reasons"][0].startswith("CaptureFailed: capturing a CUDA graph on cuda"), r
    assert r["caller_stream_current"] and r["pool_known"] and not r["pool_segments"], r
    assert r["same_losses"], r


def test_the_capture_fallback_check_runs_eagerly_on_cpu():
    """No capture on a CPU: the host read is allowed, nothing falls back, the losses agree."""
    r = capture_fallback(CPU)
    assert r["moves"] == [] and r["same_losses"] and r["caller_stream_current"], r
