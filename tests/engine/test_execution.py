"""Where a run goes when its fastest path cannot start (runner.engine.execution): under the
automatic settings a failed compile or capture moves it to the next safer path, trains the same
step there, and every step trains once, exactly as the eager step trains it; an explicit
setting that fails is an error naming it and the cause; summary.json says what ran and why.

On CPU: torch.compile replaced by wrappers that fail where Inductor would (the first forward, a
lazily compiled backward, a later call), the CUDA graph calls faked (tests/fake_cuda.py), and one
real compile through a C++ compiler that is not there."""

import dataclasses
import json
import logging
from contextlib import nullcontext

import pytest
import torch
from fake_cuda import CAPTURE_SYNC, FakeCuda

from runner.core.models import build_resnet
from runner.core.schedules import warm_restarts
from runner.core.step_plan import StepPlan, decoupled_rate
from runner.core.update_rule import Optimizer
from runner.engine.execution import Execution, ExecutionPath, PathError, next_path
from runner.engine.step import EagerStep

CPU, SPE, STEPS, LR = torch.device("cpu"), 4, 10, 3e-3
BATCHES = [
    (
        torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(k), dtype=torch.float64),
        torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(50 + k)),
    )
    for k in range(STEPS)
]
LOG_POINTS = [k % 4 == 3 for k in range(STEPS)]
AUTO = frozenset({"compile", "cuda_graphs"})
log = logging.getLogger("runner")


def trainee():
    """(model, optimizer, plan): a float64 ResNet8 under fused AdamW with L2 and a warm-restart
    schedule, the GPU's kernels run on CPU (tests/engine/test_step.py)."""
    torch.manual_seed(0)
    model = build_resnet(8, 1, 10, bn_momentum=0.1).double()
    opt = Optimizer(model, algorithm="adam", l2=1e-3, fused=True)
    schedule, _ = warm_restarts(T_0=1.0, T_mult=2.0, eta_min=0.05)
    etas = [schedule(k / SPE) for k in range(STEPS)]
    rate = decoupled_rate(0.05, "schedule", LR)
    d = [rate(k / SPE, e) for k, e in enumerate(etas)]
    return model, opt, StepPlan(None, 0.05, 1e-3, None, [LR * e for e in etas], d, SPE)


def path(compile=False, cuda_graphs=False, mode="default") -> ExecutionPath:
    return ExecutionPath(CPU, "fp32", compile, mode if compile else None, cuda_graphs, False)


def eager_run() -> tuple[list, dict]:
    """Every step's (loss, correct images, ‖g‖ at log points) and the weights, eagerly."""
    model, opt, plan = trainee()
    step = EagerStep(model, opt, nullcontext(), plan)
    return [outcome(step(*BATCHES[k], k, LOG_POINTS[k])) for k in range(STEPS)], model.state_dict()


def outcome(out) -> tuple:
    norms = None if out.grad_norms is None else out.grad_norms.tolist()
    return out.loss.item(), out.correct.item(), norms


def execution(p: ExecutionPath, automatic=AUTO) -> Execution:
    model, opt, plan = trainee()
    return Execution(model, opt, nullcontext(), plan, p, 0, automatic, log)


def train(ex: Execution) -> list:
    return [outcome(ex.run_step(*BATCHES[k], k, LOG_POINTS[k])) for k in range(STEPS)]


def assert_trains_as_eager(ex: Execution, outcomes: list) -> None:
    """Step for step the eager run's losses, counts and norms, and its weights, exactly."""
    eager, weights = eager_run()
    assert outcomes == eager
    for (name, p), q in zip(weights.items(), ex.model.state_dict().values()):
        assert torch.equal(p, q), name


class Compiled:
    """What torch.compile returns, failing as Inductor would: at call number `fail_at` (1: the
    first forward), in the forward or (`backward`) in the lazily compiled backward, after the
    forward has updated BatchNorm's running statistics."""

    def __init__(self, model, fail_at=1, backward=False):
        self.model, self.fail_at, self.backward, self.calls = model, fail_at, backward, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls != self.fail_at:
            return self.model(x)
        error = RuntimeError("InductorError: InvalidCxxCompiler: No working C++ compiler found")
        if not self.backward:
            raise error
        out = self.model(x)  # the forward ran: running statistics moved

        def fail(grad):
            raise error

        out.register_hook(fail)
        return out


def fake_compile(monkeypatch, **failing):
    made = []

    def compile_(model, mode=None, dynamic=None):
        made.append(Compiled(model, **failing) if failing else Compiled(model, fail_at=0))
        return made[-1]

    monkeypatch.setattr(torch, "compile", compile_)
    return made


# ---------------------------------------------------------------- the next safer path


@pytest.mark.parametrize(
    "start,failed,automatic,then",
    [
        ((True, True), "compile", AUTO, (False, True)),  # graphs without compile
        ((True, True), "capture", AUTO, (False, True)),  # compiled kernels may break a capture
        ((False, True), "capture", AUTO, (False, False)),  # then eager
        ((True, False), "compile", AUTO, (False, False)),
        ((True, True), "capture", {"cuda_graphs"}, (True, False)),  # compile=true is kept
        ((True, True), "compile", {"cuda_graphs"}, None),  # compile=true cannot be honoured
        ((False, True), "capture", {"compile"}, None),  # cuda_graphs=true cannot
        ((False, False), "capture", AUTO, None),  # eager is the last
    ],
)
def test_the_next_safer_path_gives_up_only_what_was_left_automatic(start, failed, automatic, then):
    nxt = next_path(path(*start), failed, frozenset(automatic))
    assert (nxt and (nxt.compile, nxt.cuda_graphs)) == then or nxt is then is None
    if nxt is not None:
        assert nxt.compile_mode is (None if not nxt.compile else "default")


def test_dropping_a_compile_mode_that_records_its_own_graphs_brings_the_steps_graphs_back():
    own = path(True, False, mode="reduce-overhead")
    assert next_path(own, "compile", AUTO) == path(False, True)
    assert next_path(own, "compile", frozenset({"compile"})) == path(False, False)


# ---------------------------------------------------------------- compile


@pytest.mark.parametrize("backward", [False, True])
def test_a_compile_that_fails_at_the_first_step_falls_back_to_eager_and_loses_no_step(
    monkeypatch, caplog, backward
):
    """The same batch trains again on the eager path from the state before the failed call: a
    backward that fails after the forward moved BatchNorm's statistics leaves no trace."""
    fake_compile(monkeypatch, backward=backward)
    ex = execution(path(compile=True))
    outcomes = train(ex)
    assert ex.path == path() and isinstance(ex.step, EagerStep)
    (fb,) = ex.fallbacks
    assert (fb.after_steps, fb.failed, fb.where) == (0, "compile", "the training step")
    assert fb.came_from == path(compile=True) and fb.to == path()
    assert (
        fb.reason
        == "RuntimeError: InductorError: InvalidCxxCompiler: No working C++ compiler found"
    )
    assert_trains_as_eager(ex, outcomes)
    (warning,) = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert "torch.compile failed in the training step after 0 steps" in warning
    assert "InvalidCxxCompiler" in warning and "goes on fp32 instead of fp32, compiled" in warning


def test_an_explicit_compile_that_fails_is_an_error_naming_the_setting_and_the_cause(monkeypatch):
    fake_compile(monkeypatch, backward=True)
    ex = execution(path(compile=True), automatic=frozenset({"cuda_graphs"}))
    before = {k: v.clone() for k, v in ex.model.state_dict().items()}
    with pytest.raises(PathError, match=r"^trainer.compile=true: torch.compile failed") as caught:
        ex.run_step(*BATCHES[0], 0, False)
    message = str(caught.value)
    assert "InvalidCxxCompiler" in message and "trainer.compile=null" in message
    assert "trainer.compile=false" in message and not ex.fallbacks
    for k, v in ex.model.state_dict().items():  # the failed call left nothing behind
        assert torch.equal(v, before[k]), k


def test_an_error_once_compiled_is_the_runs_error_not_a_fallback(monkeypatch):
    """Only a call that compiles or captures may fall back: later, an error is a bug to see."""
    fake_compile(monkeypatch, fail_at=3)
    ex = execution(path(compile=True))
    for k in range(2):
        ex.run_step(*BATCHES[k], k, False)
    with pytest.raises(RuntimeError, match="InvalidCxxCompiler"):
        ex.run_step(*BATCHES[2], 2, False)
    assert not ex.fallbacks and ex.path.compile


def test_a_compile_that_fails_in_the_validation_forward_moves_the_whole_run(monkeypatch):
    """Eval mode compiles anew at the first validation: the forward falls back, and so does the
    training step, from the step the run has reached."""
    made = fake_compile(monkeypatch)
    ex = execution(path(compile=True))
    made[0].fail_at = 0  # the training forward compiles fine
    for k in range(3):
        ex.run_step(*BATCHES[k], k, False)
    made[0].fail_at = made[0].calls + 1
    ex.model.eval()
    with torch.no_grad():
        out = ex.run_forward(BATCHES[3][0])
        expected = ex.model(BATCHES[3][0])
    ex.model.train()
    assert torch.equal(out, expected)
    (fb,) = ex.fallbacks
    assert (fb.after_steps, fb.where, ex.path) == (3, "the validation forward", path())
    assert isinstance(ex.step, EagerStep) and ex.run_step(*BATCHES[3], 3, False).startup


# ---------------------------------------------------------------- capture


@pytest.mark.parametrize("fail", ["end", "sync"])
def test_a_capture_that_fails_after_warm_up_falls_back_path_by_path_and_loses_no_step(
    monkeypatch, fail
):
    """compile + graphs: three warm-up steps (real steps), the capture fails at the fourth; graphs
    without compile: three more, the capture fails again; eager from the seventh. Every step once,
    as the eager step trains it, and the caller's stream current throughout."""
    fake = FakeCuda(monkeypatch, fail=fail)
    fake_compile(monkeypatch)
    ex = execution(path(compile=True, cuda_graphs=True))
    if fail == "sync":  # a host read in the model's forward: no graph can hold it
        forward = ex.model.forward
        ex.model.forward = lambda x: forward(x) * (x.sum().item() != 0)  # × 1: the same logits
    sides = [ex.step.side]
    outcomes = []
    for k in range(STEPS):
        outcomes.append(outcome(ex.run_step(*BATCHES[k], k, LOG_POINTS[k])))
        assert fake.now is None, k  # never the side stream
        sides += [getattr(ex.step, "side", None)]
    moves = [(f.after_steps, f.failed, f.came_from, f.to) for f in ex.fallbacks]
    assert moves == [
        (3, "capture", path(True, True), path(False, True)),
        (6, "capture", path(False, True), path(False, False)),
    ]
    cause = CAPTURE_SYNC if fail == "sync" else "cudaStreamEndCapture failed"
    assert all(cause in f.reason for f in ex.fallbacks), ex.fallbacks
    assert fake.released == [fake.pools[0], fake.pools[1]] and not fake.routing
    assert fake.streams == [sides[0]] and sides[1:7] == [sides[0]] * 6  # one side stream, kept
    assert_trains_as_eager(ex, outcomes)


def test_a_capture_that_only_compiled_code_breaks_goes_on_with_graphs_without_compile(
    monkeypatch,
):
    """A host read in the compiled wrapper alone: the capture without compile works."""
    fake = FakeCuda(monkeypatch, fail="sync")
    fake_compile(monkeypatch)
    real = Compiled.__call__
    monkeypatch.setattr(Compiled, "__call__", lambda c, x: real(c, x) * (x.sum().item() != 0))
    ex = execution(path(compile=True, cuda_graphs=True))
    for k in range(8):  # 3 warm-ups, the failed capture; 3 warm-ups again, the capture
        ex.run_step(*BATCHES[k], k, False)
    assert [(f.after_steps, f.to) for f in ex.fallbacks] == [(3, path(False, True))]
    assert ex.path == path(False, True) and ex.graphed.captures == 1 and fake.now is None
    assert fake.captures == [ex.step.side] * 2 and fake.released == [fake.pools[0]]


def test_an_explicit_cuda_graphs_that_cannot_capture_is_an_error_naming_it(monkeypatch):
    fake = FakeCuda(monkeypatch, fail="end")
    ex = execution(path(cuda_graphs=True), automatic=frozenset({"compile"}))
    for k in range(3):
        ex.run_step(*BATCHES[k], k, False)
    with pytest.raises(PathError, match=r"^trainer.cuda_graphs=true: recording the training step"):
        ex.run_step(*BATCHES[3], 3, False)
    assert fake.now is None and fake.released == [fake.pools[0]]


# ---------------------------------------------------------------- a whole run


def test_a_run_whose_compile_cannot_work_falls_back_and_its_summary_says_what_ran(
    tmp_path, monkeypatch
):
    """A real torch.compile through a C++ compiler that is not there (Inductor compiles C++ on a
    CPU), with trainer.compile=null taken as on, as on CUDA: the run trains eagerly, its records
    are the eager run's step for step, and summary.json says what ran and why. Explicit, the
    same failure stops the run with the setting and the cause."""
    import torch._inductor.config as inductor
    from gpu_runs import drain, tiny_config, train_losses

    from runner.engine import build

    def compiling(tr, device):  # what trainer.compile=null means on CUDA
        return dataclasses.replace(real(tr, device), compile=True, compile_mode="default")

    real = build.execution_path
    monkeypatch.setattr(build, "execution_path", compiling)
    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    torch._dynamo.reset()  # nothing compiled earlier in this process to reuse
    small = dict(epochs=1, depth=8, bn_recalibrate=0, compile_cache=str(tmp_path / "cache"))
    drain(tiny_config(CPU, compile=None, **small), tmp_path / "auto")
    s = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert s["status"] == "completed" and s["path"]["compile"] is False
    (fb,) = s["path_fallback"]
    assert fb["failed"] == "compile" and fb["after_steps"] == 0 and fb["to"] == "fp32"
    assert "InvalidCxxCompiler" in fb["reason"] and fb["from"] == "fp32, compiled"
    monkeypatch.setattr(build, "execution_path", real)
    drain(tiny_config(CPU, compile=False, **small), tmp_path / "eager")
    assert train_losses(tmp_path / "auto") == train_losses(tmp_path / "eager")
    assert json.loads((tmp_path / "eager" / "summary.json").read_text())["path_fallback"] is None
    monkeypatch.setattr(build, "execution_path", compiling)
    with pytest.raises(PathError, match=r"trainer.compile=true: .*InvalidCxxCompiler"):
        drain(tiny_config(CPU, compile=True, **small), tmp_path / "explicit")
