"""The training step: one body, run eagerly or replayed as a CUDA graph.

`step_body` is step k itself: forward, backward, ‖g‖ of the data loss, then Optimizer.apply (L2, the decoupled
shrink, the Adam/SGD update) with lr_t and 1 − d_t. `EagerStep` calls it with the plan's values for step k as
Python numbers (core.step_plan, rounded by Optimizer.lr_value/keep_value). `GraphedStep` calls the same body with
two device tensors that it fills from device copies of the plan at a step counter the graph advances itself, so
nothing in the step comes from the host, and records it once per batch shape as a CUDA graph.

Why graphs: at batch 128 a ResNet56v2 step is bound by kernel launches, not FLOPs (~1000 small kernels that
Python launches more slowly than the GPU runs them; docs/results/2026-11-28-h200: 3,994 img/s eager, 17,214
img/s graphed on an H200). Each step's loss lands in a device buffer at its own index, so the loop reads them
back in one transfer at logging points. Eager warm-up comes first for each shape (cudnn autotuning,
torch.compile, the optimizer's lazy state), on a side stream as CUDA graph capture requires; these are real
training steps. Without CUDA (`capture=False`) the device-side step runs eagerly: that is how the tests check it
against the eager step on CPU. `GraphedForward` records the eval-mode forward the same way.
"""

from __future__ import annotations

import time
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer


def step_body(forward, opt: Optimizer, autocast, x, y, lr_t, keep, want_grad_norm: bool):
    """Step k on batch (x, y) with lr_t and keep = 1 − d_t (None: no shrink); returns (loss, the batch's correctly
    classified images in train mode, ‖g‖ or None), on the device. Gradients must be None on entry."""
    with autocast:
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
    correct = (logits.detach().argmax(1) == y).sum()
    loss.backward()
    grad_norm = None
    if want_grad_norm:  # data-loss gradient, before L2 joins it
        grad_norm = torch.stack(torch._foreach_norm([p.grad for p in opt.params if p.grad is not None])).norm()
        opt.note_l2_terms()  # Adam + L2: how large the L2 term is against g and v̂
    opt.apply(lr_t, keep)
    return loss.detach().float(), correct, grad_norm


def train_step(model, opt: Optimizer, x, y, t: float, eta: float, autocast, want_grad_norm: bool = False):
    """The eager step at epoch t with multiplier η_t, its lr_t and d_t from the optimizer's own rule; returns
    (loss, d_t, ‖g‖ or None) with the tensors left on the device."""
    d = opt.decay(t, eta) if opt.wd else 0.0
    lr_t, keep = opt.lr_value(opt.lr * eta), opt.keep_value(d) if d else None
    loss, _, grad_norm = step_body(model, opt, autocast, x, y, lr_t, keep, want_grad_norm)
    opt.zero_grad()
    return loss, d, grad_norm


class EagerStep:
    """Step k as the plan says, launched op by op from the host."""

    def __init__(self, forward, opt: Optimizer, autocast, plan: StepPlan):
        self.forward, self.opt, self.autocast, self.plan = forward, opt, autocast, plan
        self.capture_s, self.first = 0.0, True

    def __call__(self, x, y, k: int, want_grad_norm: bool):
        """(loss, correct, ‖g‖ or None, whether this was a start-up step: the first one compiles and autotunes)."""
        lr, d = self.plan.at(k)
        keep = self.opt.keep_value(d) if d else None
        loss, correct, grad_norm = step_body(self.forward, self.opt, self.autocast, x, y, self.opt.lr_value(lr), keep,
                                    want_grad_norm)  # fmt: skip
        self.opt.zero_grad()
        startup, self.first = self.first, False
        return loss, correct, grad_norm, startup


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


EMPTY_GRAPH = "The CUDA Graph is empty"  # torch's warning when a capture recorded no work (wrong device or stream)


def record_graph(graph, stream, device: torch.device, body) -> None:
    """Record `body()` into `graph` on `stream`, a stream of `device`, with `device` current (torch's capture syncs
    and allocates on the current device). A graph that recorded nothing would replay as a no-op and train nothing:
    that is an error here, not a warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.cuda.device(device), torch.cuda.graph(graph, stream=stream):
            body()
    for w in caught:
        if EMPTY_GRAPH in str(w.message):
            raise RuntimeError(f"the CUDA graph captured on {device} recorded no work: {w.message}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # the others, as they came


class GraphedStep:
    """forward + backward + L2 + decoupled shrink + optimizer update for step k, with lr_t and d_t read
    on the device from per-step tables; captured as one CUDA graph per batch shape when `capture`."""

    def __init__(
        self,
        model,
        opt: Optimizer,
        autocast,
        lr: Sequence[float],
        decay: Sequence[float],
        start_step: int = 0,
        *,
        capture: bool,
        warmup: int = 3,
    ):
        self.device = dev = opt.params[0].device
        self.model, self.opt, self.autocast, self.capture, self.warmup = model, opt, autocast, capture, warmup
        dtype = opt.params[0].dtype
        # the values the eager step would use, rounded in the one place both paths share
        self.lr_table = torch.tensor([opt.lr_value(v) for v in lr], dtype=opt.lr_dtype, device=dev)
        self.keep_table = torch.tensor([opt.keep_value(d) for d in decay], dtype=dtype, device=dev)
        self.counter = torch.full((1,), start_step, dtype=torch.int64, device=dev)  # the next step's index
        self.lr_t = torch.zeros((), dtype=opt.lr_dtype, device=dev)  # the current step's lr_t and 1 − d_t:
        self.keep = torch.zeros((), dtype=dtype, device=dev)  # the optimizer reads these two tensors
        self.losses = torch.full((len(lr),), float("nan"), device=dev)  # train loss of step k at index k
        self.corrects = torch.zeros((len(lr),), dtype=torch.int64, device=dev)  # its correctly classified images
        self.positions = torch.arange(len(lr), device=dev)  # k at index k: where step k's values go
        self.grad_norm = torch.zeros((), dtype=dtype, device=dev)  # ‖g‖ of the data loss at the latest step
        self.graphs: dict[tuple, tuple] = {}  # batch shape → (graph, static images, static labels)
        self.seen: dict[tuple, int] = {}
        self.capture_s = 0.0  # time spent recording graphs, kept apart from the training rate
        self.side = torch.cuda.Stream(dev) if capture else None  # warm-up and capture, on the weights' device

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """step_body at the counter's step, every tensor op on the device."""
        self.lr_t.copy_(self.lr_table.index_select(0, self.counter)[0])
        self.keep.copy_(self.keep_table.index_select(0, self.counter)[0])
        keep = self.keep if self.opt.wd else None
        loss, correct, grad_norm = step_body(self.model, self.opt, self.autocast, x, y, self.lr_t, keep, True)
        self.grad_norm.copy_(grad_norm)
        # elementwise, not index_copy_: with deterministic algorithms on, CUDA runs index_copy_ as
        # index_put_ with a sort, whose range check reads the index on the host (ATen's
        # index_copy_out, wrapIndexOnce): a sync that a capture refuses. torch.where never syncs,
        # and each slot is written by one thread: deterministic too.
        at = self.positions == self.counter
        self.losses.copy_(torch.where(at, loss, self.losses))
        self.corrects.copy_(torch.where(at, correct, self.corrects))
        self.counter += 1

    def __call__(self, x: torch.Tensor, y: torch.Tensor, k: int, want_grad_norm: bool = True):
        """Train on batch (x, y) as step k of the run; returns (loss, correct, ‖g‖ or None) as device tensors, and
        whether this call warmed up or recorded a graph (a start-up step, timed apart from the steady rate)."""
        loss, startup = self._run(x, y, k)
        return loss, self.corrects[k], self.grad_norm if want_grad_norm else None, startup

    def _run(self, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, bool]:
        if not self.capture:
            self.opt.zero_grad()
            self._body(x, y)
            return self.losses[k], False
        shape = (tuple(x.shape), x.stride(), tuple(y.shape))
        entry = self.graphs.get(shape)
        startup = entry is None
        if entry is None:
            self.seen[shape] = self.seen.get(shape, 0) + 1
            if self.seen[shape] <= self.warmup:
                self._warm(x, y)
                return self.losses[k], True
            entry = self.graphs[shape] = self._record(x, y)
        graph, static_x, static_y = entry
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return self.losses[k], startup

    def _warm(self, x, y) -> None:
        """An eager step on a side stream, as the CUDA graph docs ask before a capture."""
        current = torch.cuda.current_stream(self.device)  # the run's stream (its own in a pack), on its device
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # Adam warns when run uncaptured
            self.opt.zero_grad()
            self._body(x, y)
        current.wait_stream(self.side)

    def _record(self, x, y) -> tuple:
        """Record the step for this batch shape (nothing runs yet; the caller replays it)."""
        _sync(x.device)
        tick = time.perf_counter()
        static_x, static_y = x.clone(), y.clone()
        self.opt.zero_grad()  # the graph allocates the gradients in its own memory pool and rewrites them each replay
        graph = torch.cuda.CUDAGraph()
        record_graph(graph, self.side, self.device, lambda: self._body(static_x, static_y))
        _sync(x.device)
        self.capture_s += time.perf_counter() - tick
        return graph, static_x, static_y


class GraphedForward:
    """`forward(x)` of one fixed input shape (validation's padded batches), recorded once as a CUDA graph after
    `warmup` eager calls and replayed after; the caller owns model.eval()/train(). Eager when not `capture`.
    Warm-up and capture use one side stream of the input's device, made at the first call and kept: a new stream
    per call would come from torch's small round-robin pool, shared with the other runs of a pack."""

    def __init__(self, forward, autocast, *, capture: bool, warmup: int = 2):
        self.forward, self.autocast, self.capture, self.warmup = forward, autocast, capture, warmup
        self.calls, self.graph, self.static_x, self.static_out = 0, None, None, None
        self.side: torch.cuda.Stream | None = None
        self.capture_s = 0.0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.capture:
            with self.autocast:
                return self.forward(x)
        if self.graph is None:
            self.calls += 1
            if self.side is None:
                self.side = torch.cuda.Stream(x.device)
            if self.calls <= self.warmup:
                return self._warm(x)
            _sync(x.device)
            tick = time.perf_counter()
            self.static_x, self.graph = x.clone(), torch.cuda.CUDAGraph()
            record_graph(self.graph, self.side, x.device, lambda: self._record(self.static_x))
            _sync(x.device)
            self.capture_s += time.perf_counter() - tick
        if x.shape != self.static_x.shape or x.stride() != self.static_x.stride():
            raise ValueError(
                f"GraphedForward was recorded for {tuple(self.static_x.shape)}, got {tuple(x.shape)}: "
                "validation batches must all have one shape (DeviceLoader(pad_last=True))"
            )
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_out

    def _warm(self, x: torch.Tensor) -> torch.Tensor:
        """An eager call on the side stream; its output, made there and used on the caller's stream, is marked as
        used by that stream, so the allocator does not hand its memory out before the caller is done with it."""
        current = torch.cuda.current_stream(x.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side), self.autocast:
            out = self.forward(x)
        current.wait_stream(self.side)
        out.record_stream(current)
        return out

    def _record(self, x: torch.Tensor) -> None:
        with self.autocast:
            self.static_out = self.forward(x)
