"""The CUDA paths train exactly like the eager loop. Tests marked `gpu` need a CUDA device and are
skipped elsewhere; on a GPU machine (the GPU command, `make gpu`, runs them right after its
preflight, all but the one marked `compile`, whose check is the preflight's own):

    python -m pytest -m gpu tests/test_gpu.py tests/test_gpu_preflight.py

Checks:
  step equivalence  each optimizer preset (adamw, adam_l2, sgdw, sgd_l2) with L2, decoupled decay
                    and both, in float64: the `EagerStep` (fused optimizer, as the eager trainer
                    builds it) against `GraphedStep(capture=True)` (capturable, as the graphed
                    trainer builds it), on batches of two shapes (two graphs, each replayed): every
                    loss, d_t and ‖g‖, weight, BatchNorm buffer and optimizer moment equal
                    (torch.equal), cuDNN deterministic.
  recalibration     a short captured run whose validations recalibrate BatchNorm every 3 steps
                    trains bit for bit like the same run validating once per epoch without
                    recalibration.
  eval forward      the captured validation forward (GraphedForward) gives exactly the eager
                    forward's logits.
  default path      compile + CUDA graphs over 3 epochs: after epoch 1 and its validation nothing is
                    compiled or recorded again (one training graph, one eval graph, no new compiled
                    frame).
The unmarked tests run the same checks uncaptured on CPU (their plumbing, and that they can fail).
"""

import json
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


def twin_runs(device, rule, batches, depth, tables=step_tables):
    """The eager step's and the graphed step's (loss, d_t, ‖g‖) per batch, models and optimizers."""
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
        loss, _, norms, _ = step(x, y, k, log_point=True)
        eager.append((loss.item(), step.plan.d[k], norms.norm().item()))
    m2, o2 = make(capturable=device.type == "cuda")  # what the graphed trainer builds
    graphed_plan = plan(*tables(schedule, wd, wd_scaling, len(batches)))
    g = rstep.GraphedStep(m2, o2, nullcontext(), graphed_plan, capture=device.type == "cuda")
    graphed = []
    for k, (x, y) in enumerate(batches):
        loss, _, norms, _ = g(x, y, k, log_point=True)
        graphed.append((loss.item(), graphed_plan.d[k], norms.norm().item()))
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
        "counter": g.counter.item(),
        "steps_that_differ": [k for k, (a, b) in enumerate(zip(eager, graphed)) if a != b][:5],
        "weights_that_differ": differences(m1.state_dict(), m2.state_dict()),
        "moments_that_differ": differences(moments(o1), moments(o2)),
        "trained": eager[0][0] != eager[-1][0],
    }


def assert_equivalent(r: dict, graphs: int) -> None:
    assert r["graphs"] == graphs and r["counter"] == r["steps"] and r["trained"], r
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
    assert a.path.cuda_graphs is (device.type == "cuda")
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
            seen.update(
                frames=compiled_frames(),
                graphs=len(run.trainee.graphed.graphs) if run.trainee.graphed else 0,
            )

    run = drain(
        tiny_config(device, epochs=3, bn_recalibrate=256), folder / "default_path", after_step
    )
    s = json.loads((run.out.run_dir / "summary.json").read_text())
    return {
        "execution": run.path,
        "status": s["status"],
        "epochs": len([r for r in read_metrics(run.out.recorder.path) if "epoch_train_s" in r]),
        "graphs": len(run.trainee.graphed.graphs) if run.trainee.graphed else 0,
        "graphs_after_epoch_1": seen["graphs"],
        "eval_captured": run.trainee.eval_forward.graph is not None,
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
    assert r["status"] == "completed" and r["epochs"] == 3 and r["eval_captured"], r
    assert (
        r["graphs"] == r["graphs_after_epoch_1"] == 1 and r["frames"] == r["frames_after_epoch_1"]
    ), r


def test_recalibration_and_eval_forward_checks_run_on_cpu(tmp_path):
    a, b, weights = recalibration_identity(CPU, tmp_path)
    assert a == b and len(a) == 16 and not weights
    unequal, ev_eager, ev_captured, captured = eval_forward_equality(CPU)
    assert unequal == 0 and ev_eager == ev_captured and not captured
