"""The training step: one body, run eagerly or replayed as a CUDA graph.

`step_body` is step k itself: forward, backward, the data gradient's norms (at log points), then
Optimizer.apply (L2, the decoupled shrink, the Adam/SGD update) with lr_t and 1 − d_t from the
plan (core.step_plan). Both step classes take the same arguments. `EagerStep` passes the plan's
values for step k as Python numbers. `GraphedStep` passes two device tensors that it fills from
device copies of the plan at a step counter the graph advances itself, so nothing in the step
comes from the host, and records it as CUDA graphs.

Why graphs: at batch 128 a ResNet56v2 step is bound by kernel launches, not FLOPs (~1000 small
kernels that Python launches more slowly than the GPU runs them; docs/results/2026-11-28-h200:
3,994 img/s eager, 17,214 img/s graphed on an H200). Each step's loss lands in a device buffer at
its own index, so the loop reads them back in one transfer at log points. Eager warm-up comes
first for each shape (cudnn autotuning, torch.compile, the optimizer's lazy state), on a side
stream as CUDA graph capture requires; these are real training steps. A graph cannot branch, so
each batch shape gets two: the plain step, and the step of a log point, which also computes the
gradient norms (one foreach norm); both read the same static batch and share one memory pool,
since nothing they leave in it outlives a replay. Without CUDA (`capture=False`) the device-side
step runs eagerly: that is how the tests check it against the eager step on CPU. `GraphedForward`
records the eval-mode forward the same way.

A capture that fails raises CaptureFailed with the caller's stream current again and the failed
graph's memory pool handed back (`record_graph`); engine.execution decides what happens next.
"""

from __future__ import annotations

import time
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer


class StepOut(NamedTuple):
    """What step k left on the device, and whether it was a start-up step (compilation,
    autotuning, a graph's warm-up or capture: timed apart from the steady rate)."""

    loss: torch.Tensor  # the batch's data loss
    correct: torch.Tensor  # the batch's correctly classified images (train mode)
    grad_norms: torch.Tensor | None  # ‖g‖ of each parameter's data gradient, at log points
    startup: bool


def step_body(forward, opt: Optimizer, autocast, x, y, lr_t, keep, grad_norms: bool):
    """Step k on batch (x, y) with lr_t and keep = 1 − d_t (None: no shrink); returns (loss, the
    batch's correctly classified images, the data gradient's norms or None), on the device.
    Gradients must be None on entry."""
    with autocast:
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
    correct = (logits.detach().argmax(1) == y).sum()
    loss.backward()
    norms = opt.grad_norms() if grad_norms else None  # the data loss's, before L2 joins it
    opt.apply(lr_t, keep)
    return loss.detach().float(), correct, norms


def batch_shape(x: torch.Tensor, y: torch.Tensor) -> tuple:
    """What a compiled or recorded step is specific to: the batch's shapes and layout."""
    return tuple(x.shape), x.stride(), tuple(y.shape)


class EagerStep:
    """Step k as the plan says, launched op by op from the host."""

    def __init__(self, forward, opt: Optimizer, autocast, plan: StepPlan, start: int = 0):
        self.forward, self.opt, self.autocast, self.plan = forward, opt, autocast, plan
        self.shapes: set[tuple] = set()  # the batch shapes it has trained on

    def steady(self, x: torch.Tensor, y: torch.Tensor, log_point: bool) -> bool:
        """Whether a call on this batch has nothing new to compile: its shape has run before."""
        return batch_shape(x, y) in self.shapes

    def __call__(self, x, y, k: int, log_point: bool) -> StepOut:
        lr, d = self.plan.at(k)
        keep = self.opt.keep_value(d) if self.plan.wd else None
        lr_t = self.opt.lr_value(lr)
        loss, correct, norms = step_body(
            self.forward, self.opt, self.autocast, x, y, lr_t, keep, log_point
        )
        self.opt.zero_grad()
        startup = not self.shapes  # the first step compiles and autotunes
        self.shapes.add(batch_shape(x, y))
        return StepOut(loss, correct, norms, startup)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


EMPTY_GRAPH = "The CUDA Graph is empty"  # torch's warning when a capture recorded no work


class CaptureFailed(RuntimeError):
    """Recording a CUDA graph failed; the caller's stream is current again and the graph's memory
    is handed back. The cause is chained (`__cause__`)."""


def record_graph(graph, stream, device: torch.device, body, pool) -> None:
    """Record `body()` into `graph` on `stream`, a stream of `device`, with `device` current
    (torch's capture syncs and allocates on the current device), into memory pool `pool`
    (torch.cuda.graph_pool_handle()). A graph that recorded nothing would replay as a no-op and
    train nothing: that is an error here, not a warning.

    When the capture fails, torch.cuda.graph's exit stops at capture_end's error, before it puts
    back the stream it made current, and a capture that CUDA invalidated never tells the
    allocator that it ended (ATen's CUDAGraph::capture_end throws at cudaStreamEndCapture, before
    endAllocateToPool): the allocator would keep the pool's blocks for good. Both are undone here
    before CaptureFailed is raised."""
    caller = torch.cuda.current_stream(device)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.cuda.device(device), torch.cuda.graph(graph, pool=pool, stream=stream):
                body()
        for w in caught:
            if EMPTY_GRAPH in str(w.message):
                raise CaptureFailed(f"the CUDA graph captured on {device} recorded no work")
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # as they came
    except Exception as e:
        torch.cuda.set_stream(caller)
        release_pool(device, pool)
        if isinstance(e, CaptureFailed):
            raise
        root = e  # what failed first: capture_end's error then only says that something did
        while (root.__cause__ or root.__context__) is not None:
            root = root.__cause__ or root.__context__
        raise CaptureFailed(f"capturing a CUDA graph on {device} failed: {first_line(root)}") from e


def release_pool(device: torch.device, pool) -> None:
    """Hand back the reference a failed capture took on `pool`, if capture_end did not get as far
    as ending it (then the graph, once dropped, releases it itself): what lets
    torch.cuda.empty_cache() return the failed graph's memory. torch has no public call for it."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        torch._C._cuda_endAllocateToPool(index, pool)
    except RuntimeError:  # "not currently recording": the capture ended, or never began
        return
    torch._C._cuda_releasePool(index, pool)


def first_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


class Recorded(NamedTuple):
    """One batch shape's graphs: the static batch they read and a graph per kind of step (True:
    a log point's, which also computes the gradient norms)."""

    x: torch.Tensor
    y: torch.Tensor
    graphs: dict[bool, object]


class GraphedStep:
    """forward + backward + L2 + decoupled shrink + optimizer update for step k, with lr_t and
    d_t read on the device from the plan's tables; two CUDA graphs per batch shape (`capture`):
    the plain step and the log point's."""

    def __init__(
        self,
        forward,
        opt: Optimizer,
        autocast,
        plan: StepPlan,
        start: int = 0,
        *,
        capture: bool = True,
        warmup: int = 3,
        side: torch.cuda.Stream | None = None,
    ):
        self.device = dev = opt.params[0].device
        self.forward, self.opt, self.autocast, self.plan = forward, opt, autocast, plan
        self.capture, self.warmup = capture, warmup
        dtype = opt.params[0].dtype
        # the values the eager step would use, rounded in the one place both paths share
        lrs = [opt.lr_value(v) for v in plan.lr]
        self.lr_table = torch.tensor(lrs, dtype=opt.lr_dtype, device=dev)
        self.keep_table = torch.tensor([opt.keep_value(d) for d in plan.d], dtype=dtype, device=dev)
        self.counter = torch.full((1,), start, dtype=torch.int64, device=dev)  # the next step
        self.lr_t = torch.zeros((), dtype=opt.lr_dtype, device=dev)  # this step's lr_t and 1 − d_t:
        self.keep = torch.zeros((), dtype=dtype, device=dev)  # the optimizer reads these two
        n = len(plan.lr)
        self.losses = torch.full((n,), float("nan"), device=dev)  # train loss of step k at k
        self.corrects = torch.zeros((n,), dtype=torch.int64, device=dev)  # its correct images
        self.positions = torch.arange(n, device=dev)  # k at index k: where step k's values go
        self.grad_norms = torch.zeros(len(opt.params), device=dev)  # the latest log point's ‖g‖s
        self.graphs: dict[tuple, Recorded] = {}  # batch shape → its static batch and graphs
        self.seen: dict[tuple, int] = {}  # batch shape → its warm-up (uncaptured: all) steps
        self.captures = 0  # graphs recorded
        self.capture_s = 0.0  # time spent recording graphs, kept apart from the training rate
        # warm-up and capture (a step rebuilt by engine.execution keeps its predecessor's: a pack
        # counts two side streams per graphed run) and the memory pool all its graphs share
        self.side = side or (torch.cuda.Stream(dev) if capture else None)
        self.pool = torch.cuda.graph_pool_handle() if capture else None

    def steady(self, x: torch.Tensor, y: torch.Tensor, log_point: bool) -> bool:
        """Whether this call replays a graph recorded before (uncaptured: its shape has run
        before): nothing to warm up, compile or capture."""
        shape = batch_shape(x, y)
        if not self.capture:
            return shape in self.seen
        recorded = self.graphs.get(shape)
        return recorded is not None and log_point in recorded.graphs

    def _body(self, x: torch.Tensor, y: torch.Tensor, norms: bool) -> None:
        """step_body at the counter's step, every tensor op on the device."""
        self.lr_t.copy_(self.lr_table.index_select(0, self.counter)[0])
        self.keep.copy_(self.keep_table.index_select(0, self.counter)[0])
        keep = self.keep if self.plan.wd else None
        loss, correct, grad_norms = step_body(
            self.forward, self.opt, self.autocast, x, y, self.lr_t, keep, norms
        )
        if norms:
            self.grad_norms.copy_(grad_norms)
        # elementwise, not index_copy_: with deterministic algorithms on, CUDA runs index_copy_ as
        # index_put_ with a sort, whose range check reads the index on the host (ATen's
        # index_copy_out, wrapIndexOnce): a sync that a capture refuses. torch.where never syncs,
        # and each slot is written by one thread: deterministic too.
        at = self.positions == self.counter
        self.losses.copy_(torch.where(at, loss, self.losses))
        self.corrects.copy_(torch.where(at, correct, self.corrects))
        self.counter += 1

    def __call__(self, x: torch.Tensor, y: torch.Tensor, k: int, log_point: bool) -> StepOut:
        """Train on batch (x, y) as step k of the run."""
        startup = self._run(x, y, log_point)
        norms = self.grad_norms if log_point else None
        return StepOut(self.losses[k], self.corrects[k], norms, startup)

    def _run(self, x: torch.Tensor, y: torch.Tensor, log_point: bool) -> bool:
        shape = batch_shape(x, y)
        if not self.capture:
            self.opt.zero_grad()
            self._body(x, y, log_point)
            self.seen[shape] = self.seen.get(shape, 0) + 1
            return False
        recorded = self.graphs.get(shape)
        if recorded is None:
            self.seen[shape] = self.seen.get(shape, 0) + 1
            if self.seen[shape] <= self.warmup:
                self._warm(x, y)
                return True
            recorded = self.graphs[shape] = Recorded(x.clone(), y.clone(), {})
        graph = recorded.graphs.get(log_point)
        startup = graph is None
        if startup:  # recorded now, replayed below
            graph = recorded.graphs[log_point] = self._record(recorded, log_point)
        recorded.x.copy_(x)
        recorded.y.copy_(y)
        graph.replay()
        return startup

    def _warm(self, x, y) -> None:
        """An eager step on a side stream, as the CUDA graph docs ask before a capture. It
        computes the gradient norms whatever the step, so that their kernels have run before
        either graph records them."""
        current = torch.cuda.current_stream(self.device)  # the run's stream (its own in a pack)
        self.side.wait_stream(current)
        try:
            with torch.cuda.stream(self.side), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")  # uncaptured Adam
                self.opt.zero_grad()
                self._body(x, y, True)
        finally:  # a failed step too: what it did on the side stream is done before the caller
            current.wait_stream(self.side)

    def _record(self, recorded: Recorded, log_point: bool):
        """Record the step for this batch shape and kind (nothing runs yet; the caller replays)."""
        _sync(self.device)
        tick = time.perf_counter()
        # the graph allocates the gradients in the pool, rewritten at each replay
        self.opt.zero_grad()
        graph = torch.cuda.CUDAGraph()
        body = lambda: self._body(recorded.x, recorded.y, log_point)  # noqa: E731
        try:
            record_graph(graph, self.side, self.device, body, self.pool)
        except CaptureFailed:
            self.opt.zero_grad()  # the failed capture's gradients live in its pool
            raise
        _sync(self.device)
        self.captures += 1
        self.capture_s += time.perf_counter() - tick
        return graph


class GraphedForward:
    """`forward(x)` of one fixed input shape (validation's padded batches), recorded once as a
    CUDA graph after `warmup` eager calls and replayed after; the caller owns
    model.eval()/train(). Eager when not `capture`. Warm-up and capture use one side stream of the
    input's device, made at the first call and kept (or `side`, a predecessor's): a new stream per
    call would come from torch's small round-robin pool, shared with the other runs of a pack."""

    def __init__(self, forward, autocast, *, capture: bool, warmup: int = 2, side=None):
        self.forward, self.autocast, self.capture, self.warmup = forward, autocast, capture, warmup
        self.calls, self.graph, self.static_x, self.static_out = 0, None, None, None
        self.side: torch.cuda.Stream | None = side
        self.pool = None
        self.capture_s = 0.0

    def steady(self, x: torch.Tensor) -> bool:
        """Whether this call has nothing new to compile or capture: it replays the graph, or
        (uncaptured) a call ran before."""
        return self.graph is not None if self.capture else self.calls > 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.capture:
            with self.autocast:
                out = self.forward(x)
            self.calls += 1
            return out
        if self.graph is None:
            if self.side is None:
                self.side = torch.cuda.Stream(x.device)
            if self.calls < self.warmup:
                out = self._warm(x)
                self.calls += 1
                return out
            self._record(x)
        if x.shape != self.static_x.shape or x.stride() != self.static_x.stride():
            raise ValueError(
                f"GraphedForward was recorded for {tuple(self.static_x.shape)}, got "
                f"{tuple(x.shape)}: validation batches must all have one shape "
                "(DeviceLoader(pad_last=True))"
            )
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_out

    def _warm(self, x: torch.Tensor) -> torch.Tensor:
        """An eager call on the side stream; its output, made there and used on the caller's
        stream, is marked as used by that stream, so the allocator does not hand its memory out
        before the caller is done with it."""
        current = torch.cuda.current_stream(x.device)
        self.side.wait_stream(current)
        try:
            with torch.cuda.stream(self.side), self.autocast:
                out = self.forward(x)
        finally:
            current.wait_stream(self.side)
        out.record_stream(current)
        return out

    def _record(self, x: torch.Tensor) -> None:
        _sync(x.device)
        tick = time.perf_counter()
        static_x, graph = x.clone(), torch.cuda.CUDAGraph()
        self.pool = self.pool or torch.cuda.graph_pool_handle()

        def body():
            with self.autocast:
                self.static_out = self.forward(static_x)

        try:
            record_graph(graph, self.side, x.device, body, self.pool)
        except CaptureFailed:
            self.static_out = None  # the failed capture's output lives in its pool
            raise
        _sync(x.device)
        self.static_x, self.graph = static_x, graph
        self.capture_s += time.perf_counter() - tick
