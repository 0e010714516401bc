"""The graph-ready step (runner.engine.step) is the eager step: same schedule, same decay, same
update, bit for bit.

On CUDA the runner trains with torch's fused Adam/SGD, and the captured step hands them lr_t as a
float32 tensor, which the fused kernels read as float32 (fused_adam_impl.cu:
lr.const_data_ptr<float>()), while the eager step passes a Python float. torch runs the same fused
kernels on CPU, so these tests run the GPU's code path here: fused=True, the float32 lr tensor,
float64 weights, and torch.equal. On CPU GraphedStep runs its device-side step eagerly
(capture=False); the capture itself is checked on a GPU (tests/test_gpu.py).
"""

import math
import os
from contextlib import nullcontext

import pytest
import torch
from conftest import compose_cfg, forbid_host_reads
from fake_cuda import CAPTURE_SYNC, FakeCuda
from torch.utils._python_dispatch import TorchDispatchMode

from runner.config import ConfigError, validate
from runner.core.models import build_resnet
from runner.core.schedules import warm_restarts
from runner.core.step_plan import StepPlan, decoupled_rate
from runner.core.update_rule import Optimizer
from runner.engine.step import CaptureFailed, EagerStep, GraphedForward, GraphedStep

SPE, STEPS, LR = 4, 12, 3e-3
BATCHES = [
    (
        torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(k), dtype=torch.float64),
        torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(50 + k)),
    )
    for k in range(STEPS)
]
# moves every step and restarts at step 4
SCHEDULE, _ = warm_restarts(T_0=1.0, T_mult=2.0, eta_min=0.05)
REGULARIZATION = {"l2": (1e-3, 0.0), "decoupled": (0.0, 0.05), "both": (1e-3, 0.05)}  # (λ₂, λ)


def make(
    algorithm,
    l2,
    wd,
    wd_scaling,
    fused=None,
    momentum=0.9,
    nesterov=False,
    betas=(0.9, 0.999),
    eps=1e-8,
):
    """(model, optimizer, the plan of every step) for a ResNet8 in float64."""
    torch.manual_seed(0)
    model = build_resnet(
        8, 1, 10, bn_momentum=0.1
    ).double()  # float64: no rounding for Adam to amplify
    opt = Optimizer(
        model,
        algorithm=algorithm,
        l2=l2,
        fused=fused,
        momentum=momentum,
        nesterov=nesterov,
        betas=betas,
        eps=eps,
    )
    rate = decoupled_rate(wd, wd_scaling, LR)
    etas = [SCHEDULE(k / SPE) for k in range(STEPS)]
    d = [rate(k / SPE, e) if wd else 0.0 for k, e in enumerate(etas)]
    plan = StepPlan(None, wd, l2, None, [LR * e for e in etas], d, SPE)
    return model, opt, plan


def eager(model, opt, plan, steps):
    step, out = EagerStep(model, opt, nullcontext(), plan), []
    for k in steps:
        loss, _, norms, _ = step(*BATCHES[k], k, log_point=True)
        out.append((loss.item(), plan.d[k], norms.norm().item()))
    return out


def graphed(model, opt, plan, steps, start=0):
    g, out = GraphedStep(model, opt, nullcontext(), plan, start, capture=False), []
    for k in steps:
        loss, correct, norms, startup = g(*BATCHES[k], k, log_point=True)
        assert 0 <= correct.item() <= len(BATCHES[k][1])  # the batch's correctly classified images
        assert not startup  # uncaptured: no warm-up, no recording
        out.append((loss.item(), plan.d[k], norms.norm().item()))
    assert g.counter.item() == steps[-1] + 1  # the device's step counter kept pace with the loop's
    return out


def assert_same_model(a, b):
    # float64 on purpose: in float32, Keras-style conv biases right before a BN get a zero true
    # gradient whose rounding noise (~1e-9) rivals Adam's eps, so any reordering of float ops turns
    # into whole steps there
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)


def preset(name):
    """The optimizer settings of configs/optimizer/NAME.yaml, as the trainer would get them."""
    o = validate(compose_cfg(f"optimizer={name}")).optimizer
    return dict(
        algorithm=o.algorithm,
        wd_scaling=o.wd_scaling,
        momentum=o.momentum,
        nesterov=o.nesterov,
        betas=tuple(o.betas),
        eps=o.eps,
    )


@pytest.mark.parametrize("reg", sorted(REGULARIZATION))
@pytest.mark.parametrize("name", ["adamw", "adam_l2", "sgdw", "sgd_l2"])
def test_the_fused_device_side_step_equals_the_eager_step_bit_for_bit(name, reg):
    """What CUDA runs: fused kernels, lr_t as a float32 tensor in the graph, a Python float in the
    eager step."""
    l2, wd = REGULARIZATION[reg]
    kw = preset(name)
    m1, o1, plan = make(l2=l2, wd=wd, fused=True, **kw)
    m2, o2, _ = make(l2=l2, wd=wd, fused=True, **kw)
    assert o2.lr_dtype == torch.float32 and o2.inner.defaults["fused"]
    a = eager(m1, o1, plan, range(STEPS))
    b = graphed(m2, o2, plan, list(range(STEPS)))
    assert a == b  # every loss, d_t and ‖g‖, exactly
    for (key, p), q in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(p, q), key
    for p, q in zip(o1.params, o2.params):  # and every moment (Adam's m, v; SGD's momentum buffer)
        for k, v in o1.inner.state[p].items():
            assert torch.equal(v, o2.inner.state[q][k]), k
    assert not math.isclose(a[0][0], a[-1][0])  # it did train


def test_fused_steps_apply_lr_rounded_to_float32_in_both_paths():
    """The one place the value is decided: without the rounding the eager step would use a different
    lr."""
    _, fused, _ = make("adam", 0.0, 0.0, "schedule", fused=True)
    _, plain, _ = make("adam", 0.0, 0.0, "schedule", fused=False)
    lr = 1e-3 / 3
    assert fused.lr_value(lr) == torch.tensor(lr, dtype=torch.float32).item() != lr
    assert plain.lr_value(lr) == lr and plain.lr_dtype == torch.float64
    assert fused.keep_value(5e-7) == 1 - 5e-7  # float64 weights: 1 − d_t as it is


@pytest.mark.parametrize(
    "algorithm,l2,wd,wd_scaling",
    [
        ("adam", 0.0, 0.05, "schedule"),  # AdamW, the paper's η_t·λ
        ("adam", 1e-3, 0.5, "lr"),  # both at once, torch's lr_t·λ
        ("sgd", 0.0, 0.05, "none"),  # SGDW, TF-Addons' constant λ
    ],
)
def test_the_unfused_device_side_step_trains_like_the_eager_step(algorithm, l2, wd, wd_scaling):
    """Without fused kernels (foreach, a float64 lr tensor) the arithmetic takes another route:
    equal to 1e-12."""
    m1, o1, plan = make(algorithm, l2, wd, wd_scaling, fused=False)
    m2, o2, _ = make(algorithm, l2, wd, wd_scaling, fused=False)
    a = eager(m1, o1, plan, range(STEPS))
    b = graphed(m2, o2, plan, list(range(STEPS)))
    for (la, da, ga), (lb, db, gb) in zip(a, b):
        assert lb == pytest.approx(la, rel=1e-12)
        assert db == pytest.approx(da, rel=1e-12, abs=1e-15)
        assert gb == pytest.approx(ga, rel=1e-12)
    assert_same_model(m1, m2)


def test_a_checkpoint_taken_between_graphed_steps_continues_the_same_run():
    m1, o1, plan = make("adam", 1e-3, 0.05, "schedule")
    straight = graphed(m1, o1, plan, list(range(STEPS)))

    m2, o2, _ = make("adam", 1e-3, 0.05, "schedule")
    graphed(m2, o2, plan, list(range(6)))
    saved = {"model": m2.state_dict(), "optimizer": o2.state_dict()}
    # not the graph's tensor
    assert all(isinstance(g["lr"], float) for g in saved["optimizer"]["param_groups"])

    m3, o3, _ = make("adam", 1e-3, 0.05, "schedule")
    m3.load_state_dict(saved["model"])
    o3.load_state_dict(saved["optimizer"])
    resumed = graphed(m3, o3, plan, list(range(6, STEPS)), start=6)
    # the same path both times: bit for bit
    assert [r[0] for r in resumed] == [r[0] for r in straight[6:]]
    for p, q in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(p, q)


def test_cuda_graphs_on_a_cpu_device_is_refused_with_the_fix():
    with pytest.raises(
        ConfigError, match=r"trainer.cuda_graphs=True.*drop trainer.cuda_graphs=true"
    ):
        validate(compose_cfg("trainer.device=cpu", "trainer.cuda_graphs=true"))


def test_a_compile_mode_with_its_own_cuda_graphs_is_refused_inside_cuda_graphs():
    with pytest.raises(
        ConfigError, match=r"trainer.compile_mode='reduce-overhead'.*compile_mode=default"
    ):
        validate(
            compose_cfg(
                "trainer.cuda_graphs=true",
                "trainer.compile=true",
                "trainer.compile_mode=reduce-overhead",
            )
        )
    # fine on its own
    validate(compose_cfg("trainer.compile=true", "trainer.compile_mode=reduce-overhead"))


def test_auto_device_without_a_gpu_refuses_cuda_graphs_before_training(tmp_path, monkeypatch):
    from runner.engine.train import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = validate(compose_cfg("data=synthetic", "model=resnet20v1", "trainer.cuda_graphs=true"))
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        train(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_graphed_step_never_reads_a_device_value_on_the_host(monkeypatch):
    """A host read inside a CUDA graph capture fails (or freezes one step's value into every
    replay)."""
    model, opt, plan = make("adam", 1e-3, 0.05, "schedule")
    g = GraphedStep(model, opt, nullcontext(), plan, capture=False)
    forbid_host_reads(monkeypatch, opt)
    g(*BATCHES[0], 0, log_point=False)
    loss, _, norms, _ = g(*BATCHES[1], 1, log_point=True)
    monkeypatch.undo()
    assert g.counter.item() == 2 and math.isfinite(loss.item()) and norms.norm().item() > 0


def test_the_eager_step_never_reads_a_device_value_on_the_host(monkeypatch):
    """On a GPU any such read is a host sync inside the step; the loop reads only at log points."""
    model, opt, plan = make("adam", 1e-4, 5e-4, "schedule")
    step = EagerStep(model, opt, nullcontext(), plan)
    forbid_host_reads(monkeypatch, opt)
    loss, correct, norms, _ = step(*BATCHES[0], 0, log_point=True)
    monkeypatch.undo()
    assert (
        isinstance(loss, torch.Tensor)
        and isinstance(correct, torch.Tensor)
        and norms.numel() == len(opt.params)
    )


def captured_step(monkeypatch, **fake):
    fake = FakeCuda(monkeypatch, **fake)
    model, opt, plan = make("adam", 0.0, 0.05, "schedule", fused=True)
    return fake, GraphedStep(model, opt, nullcontext(), plan, capture=True)


def test_the_graphed_step_warms_up_and_captures_on_its_weights_device_and_stream(monkeypatch):
    """torch's capture stream and current_stream() default to the current device (GPU 0): on cuda:N
    the step must name its own device and stream, or the graph records nothing of it."""
    fake, g = captured_step(monkeypatch)
    for k in range(5):  # 3 warm-ups, the capture, a replay
        g(*BATCHES[k], k, log_point=False)
    assert len(g.graphs) == 1 and g.captures == 1
    # never the current device by default
    assert fake.current and all(d == g.device for d in fake.current)
    assert fake.streams == [g.side] and g.side.device == g.device  # one side stream, of its device
    assert fake.captures == [g.side]  # captured there, not on torch's process-wide capture stream
    assert fake.devices == [g.device]  # with its device current while capturing
    assert fake.now is None  # the caller's stream is current again


def test_a_log_point_gets_a_graph_of_its_own_sharing_the_batch_and_the_memory_pool(monkeypatch):
    """The plain step computes no gradient norms; the first log point after the warm-up records
    the step that does, once: per batch shape two graphs, one static batch, one pool."""
    fake, g = captured_step(monkeypatch)
    log_points = [False] * 5 + [True] + [False, True]  # 3 warm-ups, the plain capture, a replay
    startups = [g(*BATCHES[k], k, log)[3] for k, log in enumerate(log_points)]
    assert startups == [True] * 4 + [False, True, False, False]
    assert len(g.graphs) == 1 and g.captures == 2 and set(g.graphs[next(iter(g.graphs))].graphs)
    assert fake.captures == [g.side, g.side] and fake.pools == [g.pool, g.pool]
    assert g.steady(*BATCHES[0], True) and g.steady(*BATCHES[0], False)
    assert not g.steady(BATCHES[0][0][:8], BATCHES[0][1][:8], False)  # another shape


def test_the_uncaptured_step_computes_gradient_norms_at_log_points_only(monkeypatch):
    """What the two graphs of a shape do, run eagerly: the norms buffer moves at log points only,
    and the losses, counts and counter train exactly as the eager step does."""
    m1, o1, plan = make("adam", 1e-3, 0.05, "schedule", fused=True)
    m2, o2, _ = make("adam", 1e-3, 0.05, "schedule", fused=True)
    step = EagerStep(m1, o1, nullcontext(), plan)
    g = GraphedStep(m2, o2, nullcontext(), plan, capture=False)
    for k in range(STEPS):
        log_point = k % 3 == 2
        before = g.grad_norms.clone()
        a, b = step(*BATCHES[k], k, log_point), g(*BATCHES[k], k, log_point)
        assert torch.equal(a.loss, b.loss) and torch.equal(a.correct, b.correct)
        if log_point:
            assert torch.equal(a.grad_norms, b.grad_norms) and not torch.equal(before, b.grad_norms)
        else:
            assert a.grad_norms is None is b.grad_norms and torch.equal(before, g.grad_norms)
    assert g.counter.item() == STEPS
    for p, q in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(p, q)


def test_a_capture_that_records_nothing_is_an_error_not_a_run_that_trains_nothing(monkeypatch):
    fake, g = captured_step(monkeypatch, empty=True)
    for k in range(3):
        g(*BATCHES[k], k, log_point=False)
    with pytest.raises(CaptureFailed, match="recorded no work"):
        g(*BATCHES[3], 3, log_point=False)
    assert fake.now is None and fake.released == []  # capture_end ran: the graph releases its pool


@pytest.mark.parametrize("fail", ["end", "sync"])
def test_a_failed_capture_puts_the_callers_stream_back_and_hands_its_memory_back(monkeypatch, fail):
    """torch.cuda.graph's exit raises at capture_end before it restores the stream it made current
    and before the allocator stops routing to the graph's pool: the step undoes both, drops the
    failed capture's gradients and raises CaptureFailed with the cause chained."""
    fake, g = captured_step(monkeypatch, fail=fail)
    if fail == "sync":  # a host read inside the step, as a model with a hidden sync has
        forward = g.forward
        g.forward = lambda x: forward(x) * (x.abs().sum().item() > 0)
    for k in range(3):
        g(*BATCHES[k], k, log_point=False)
    with pytest.raises(CaptureFailed) as caught:
        g(*BATCHES[3], 3, log_point=False)
    assert fake.now is None  # the caller's stream, not the side stream
    assert fake.released == [g.pool] and not fake.routing  # the pool's reference handed back
    assert all(p.grad is None for p in g.opt.params)
    cause = str(caught.value.__cause__)
    assert ("EndCapture" if fail == "end" else "previous error") in cause
    if fail == "sync":
        assert CAPTURE_SYNC in str(caught.value.__cause__.__cause__)


def test_the_eval_forward_keeps_one_warm_up_stream_and_marks_its_outputs_used_by_the_callers(
    monkeypatch,
):
    """A new stream per call comes from torch's round-robin pool (shared with a pack's other runs);
    an output made on the side stream and freed on the caller's could be handed out again while
    still in use."""
    fake = FakeCuda(monkeypatch)
    model = build_resnet(8, 1, 10).eval()
    forward = GraphedForward(model, nullcontext(), capture=True, warmup=2)
    x = torch.randn(4, 3, 32, 32)
    outs = [forward(x) for _ in range(4)]  # 2 warm-ups, the capture, a replay
    # one side stream, made once
    assert forward.graph is not None and fake.streams == [forward.side]
    assert fake.captures == [forward.side]
    # each warm-up output, marked as used by the caller's stream of its device
    assert len(fake.recorded) == 2
    assert all(s is not forward.side and s.device == x.device for s in fake.recorded)
    assert outs[0].shape == (4, 10)


def test_a_compiled_run_keeps_torch_compiles_caches_in_the_configured_folder(tmp_path, monkeypatch):
    """trainer.compile_cache: a later process finds what this one compiled (a warm start); null
    leaves torch's."""
    from runner.config import DataConfig, ModelConfig, RunConfig, TrainerConfig
    from runner.engine.build import setup

    def tiny(**trainer):
        tr = TrainerConfig(device="cpu", compile=True, progress=False, bn_recalibrate=0, **trainer)
        data = DataConfig(n_train=64, n_val=20)
        return RunConfig(
            epochs=1,
            batch_size=32,
            model=ModelConfig(name="resnet20v1", depth=20, version=1),
            data=data,
            trainer=tr,
        )

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    (tmp_path / "run").mkdir()
    setup(
        tiny(compile_cache=str(tmp_path / "cache")), tmp_path / "run"
    ).out.recorder.close()  # compiles at step 1
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    (tmp_path / "run2").mkdir()
    setup(tiny(), tmp_path / "run2").out.recorder.close()
    # torch's own default, if any
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(tmp_path / "cache")


@pytest.fixture
def deterministic():
    """torch's deterministic algorithms on for the test, then back as they were."""
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(was, warn_only=warn_only)


class AtenOps(TorchDispatchMode):
    """The names of the aten ops run inside the block."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_deterministic_algorithms_leave_the_device_side_step_no_op_that_syncs(deterministic):
    """Deterministic algorithms turn CUDA's index_copy_ into index_put_ with a sort, whose range
    check reads the index on the host (ATen's index_copy_out and wrapIndexOnce): inside a capture,
    an error. The step writes its loss and count without any index op that CUDA reroutes, and
    still trains as the eager step does."""
    m1, o1, plan = make("adam", 1e-3, 0.05, "schedule", fused=True)
    m2, o2, _ = make("adam", 1e-3, 0.05, "schedule", fused=True)
    a = eager(m1, o1, plan, range(STEPS))
    with AtenOps() as ops:
        b = graphed(m2, o2, plan, list(range(STEPS)))
    assert a == b  # every loss, d_t and ‖g‖, exactly
    rerouted = {"index_copy", "index_copy_", "index_put", "index_put_", "_index_put_impl_"}
    assert ops.names and not ops.names & rerouted
    for p, q in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(p, q)
