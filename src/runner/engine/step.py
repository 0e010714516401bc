"""The training step and the validation forward replayed as CUDA graphs: one launch instead of hundreds.

At batch 128 a ResNet56v2 step is bound by kernel launches, not FLOPs: the forward, backward, L2 term,
decoupled shrink and Adam update are ~1000 small kernels, and Python launches them more slowly than the
GPU runs them (docs/results/2026-11-28-h200: 3,994 img/s eager, 17,214 img/s graphed on an H200).
`GraphedStep` records the whole step once per batch shape and replays it, so the host only copies the
batch in and launches one graph; `GraphedForward` does the same for the eval-mode forward.

Nothing in the step may come from the host, so the schedule runs inside the graph: lr_t and 1 − d_t of
every step of the run are computed up front by the same `schedule(t)` and `decay(t, η_t)` the eager
loop calls, rounded by `Optimizer.lr_value`/`keep_value` exactly as the eager step rounds them, stored as
device tables, and read at a step counter the graph advances itself. Each step's loss lands in a device
buffer at its own index, so the loop reads them back in one transfer at logging points.

Eager warm-up comes first for each shape (cudnn autotuning, torch.compile, the optimizer's lazy state),
on a side stream as CUDA graph capture requires; these are real training steps. On a device without
CUDA (`capture=False`) the same device-side step runs eagerly: that is how the tests check it against
the eager loop on CPU.
"""

from __future__ import annotations

import time
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from runner.core.update_rule import Optimizer


def step_tables(schedule, decay, lr: float, steps_per_epoch: int, n_steps: int) -> tuple[list[float], list[float]]:
    """(lr_t, d_t) for steps 0..n_steps-1 at t = k / steps_per_epoch: what the eager loop computes step by step."""
    etas = [schedule(k / steps_per_epoch) for k in range(n_steps)]
    return [lr * e for e in etas], [decay(k / steps_per_epoch, e) for k, e in enumerate(etas)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        dev = opt.params[0].device
        self.model, self.opt, self.autocast, self.capture, self.warmup = model, opt, autocast, capture, warmup
        dtype = opt.params[0].dtype
        # the values the eager step would use, rounded in the one place both paths share
        self.lr_table = torch.tensor([opt.lr_value(v) for v in lr], dtype=opt.lr_dtype, device=dev)
        self.keep_table = torch.tensor([opt.keep_value(d) for d in decay], dtype=dtype, device=dev)
        self.counter = torch.full((1,), start_step, dtype=torch.int64, device=dev)  # the next step's index
        self.lr_t = torch.zeros((), dtype=opt.lr_dtype, device=dev)  # the current step's lr_t and 1 − d_t:
        self.keep = torch.zeros((), dtype=dtype, device=dev)  # the optimizer reads these two tensors
        self.losses = torch.full((len(lr),), float("nan"), device=dev)  # train loss of step k at index k
        self.grad_norm = torch.zeros((), dtype=dtype, device=dev)  # ‖g‖ of the data loss at the latest step
        self.graphs: dict[tuple, tuple] = {}  # batch shape → (graph, static images, static labels)
        self.seen: dict[tuple, int] = {}
        self.capture_s = 0.0  # time spent recording graphs, kept apart from the training rate
        self.side = torch.cuda.Stream(dev) if capture else None

    def _body(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The step itself, every tensor op on the device. Gradients must be None on entry."""
        self.lr_t.copy_(self.lr_table.index_select(0, self.counter)[0])
        self.keep.copy_(self.keep_table.index_select(0, self.counter)[0])
        with self.autocast:
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        grads = [p.grad for p in self.opt.params if p.grad is not None]
        self.grad_norm.copy_(torch.stack(torch._foreach_norm(grads)).norm())  # before L2 joins the gradient
        self.opt.step_tensors(self.lr_t, self.keep)
        self.losses.index_copy_(0, self.counter, loss.detach().float().view(1))
        self.counter += 1

    def __call__(self, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Train on batch (x, y) as step k of the run; returns (loss, ‖g‖) as device tensors, and whether this
        call warmed up or recorded a graph (a start-up step, timed apart from the steady rate)."""
        if not self.capture:
            self.opt.zero_grad()
            self._body(x, y)
            return self.losses[k], self.grad_norm, False
        shape = (tuple(x.shape), x.stride(), tuple(y.shape))
        entry = self.graphs.get(shape)
        startup = entry is None
        if entry is None:
            self.seen[shape] = self.seen.get(shape, 0) + 1
            if self.seen[shape] <= self.warmup:
                self._warm(x, y)
                return self.losses[k], self.grad_norm, True
            entry = self.graphs[shape] = self._record(x, y)
        graph, static_x, static_y = entry
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return self.losses[k], self.grad_norm, startup

    def _warm(self, x, y) -> None:
        """An eager step on a side stream, as the CUDA graph docs ask before a capture."""
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # Adam warns when run uncaptured
            self.opt.zero_grad()
            self._body(x, y)
        torch.cuda.current_stream().wait_stream(self.side)

    def _record(self, x, y) -> tuple:
        """Record the step for this batch shape (nothing runs yet; the caller replays it)."""
        _sync(x.device)
        tick = time.perf_counter()
        static_x, static_y = x.clone(), y.clone()
        self.opt.zero_grad()  # the graph allocates the gradients in its own memory pool and rewrites them each replay
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(static_x, static_y)
        _sync(x.device)
        self.capture_s += time.perf_counter() - tick
        return graph, static_x, static_y


class GraphedForward:
    """`forward(x)` of one fixed input shape (validation's padded batches), recorded once as a CUDA graph after
    `warmup` eager calls and replayed after; the caller owns model.eval()/train(). Eager when not `capture`."""

    def __init__(self, forward, autocast, *, capture: bool, warmup: int = 2):
        self.forward, self.autocast, self.capture, self.warmup = forward, autocast, capture, warmup
        self.calls, self.graph, self.static_x, self.static_out = 0, None, None, None
        self.capture_s = 0.0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.capture:
            with self.autocast:
                return self.forward(x)
        if self.graph is None:
            self.calls += 1
            if self.calls <= self.warmup:
                side = torch.cuda.Stream(x.device)
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side), self.autocast:
                    out = self.forward(x)
                torch.cuda.current_stream().wait_stream(side)
                return out
            _sync(x.device)
            tick = time.perf_counter()
            self.static_x, self.graph = x.clone(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), self.autocast:
                self.static_out = self.forward(self.static_x)
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
