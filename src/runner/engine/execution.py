"""How a run executes on its device, and where it goes when its fastest path cannot start.

`ExecutionPath` is the path: precision, torch.compile, CUDA graphs, memory layout
(engine.build.execution_path reads it from the trainer's settings). `Execution` runs the training
step and the validation forward on it (engine.step), and falls back.

Compile and capture fail, when they fail, while a path settles in: torch.compile at the first
call of each batch shape and mode (Dynamo, Inductor, Triton: a missing C compiler or Python
headers, an Inductor error; the backward may compile lazily, at the first backward), a CUDA
graph at its capture (engine.step.CaptureFailed). Under the automatic settings
(trainer.compile=null, trainer.cuda_graphs=null) such a failure moves the run to the next safer
path (`next_path`: compile + CUDA graphs, then CUDA graphs alone, then eager), and the same batch
is trained again there from the weights, BatchNorm statistics and optimizer state as they were
before the failed call: a snapshot is taken before every call that may compile or capture, so no
step is lost or repeated, and the steps run as the eager step runs them (bit for bit on CPU,
tests/engine/test_execution.py). The log says why; summary.json's `path` is the path that ran and
`path_fallback` lists each move (when, what failed, the cause). An explicit trainer.compile=true
or trainer.cuda_graphs=true that fails is a PathError naming the setting and the cause.

Why at the first call rather than in a probe at setup: compile is lazy, and what fails is the
first forward or backward of the run's own model, batch shape, precision and mode; a probe would
pay a second compile of the same model (tens of seconds cold) to predict it, where the snapshot
costs one copy of the weights and optimizer state on the device per settling call (a few per run).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from runner.config import UserError
from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer
from runner.engine.step import (
    CaptureFailed,
    EagerStep,
    GraphedForward,
    GraphedStep,
    StepOut,
    first_line,
)

OWN_GRAPHS = ("reduce-overhead", "max-autotune")  # compile modes that record their own graphs


@dataclass(frozen=True)
class ExecutionPath:
    """How the run executes on its device (trainer.*: null means on for CUDA)."""

    device: torch.device
    precision: str  # bf16 | fp32
    compile: bool
    compile_mode: str | None
    cuda_graphs: bool
    channels_last: bool

    def summary(self) -> dict:
        return {**asdict(self), "device": str(self.device)}

    def describe(self) -> str:
        """'bf16, compiled, CUDA graphs': what the log lines say."""
        return ", ".join(
            [self.precision] + ["compiled"] * self.compile + ["CUDA graphs"] * self.cuda_graphs
        )


class PathError(UserError):
    """An explicit trainer.compile=true or trainer.cuda_graphs=true that fails on this machine."""


def next_path(path: ExecutionPath, failed: str, automatic: frozenset) -> ExecutionPath | None:
    """The next safer path after `failed` ('compile' or 'capture') on `path`, giving up only
    settings left `automatic` ({'compile', 'cuda_graphs'}: those null in the config); None when
    the failure concerns an explicit one. A capture that fails on compiled code is tried once
    more without compile (compiled kernels are one thing that can break a capture) before the
    graphs go."""
    if "compile" in automatic and path.compile:
        # a compile mode that records its own graphs had them replace the step's: back they come
        own = path.compile_mode in OWN_GRAPHS and "cuda_graphs" in automatic
        return dataclasses.replace(
            path, compile=False, compile_mode=None, cuda_graphs=path.cuda_graphs or own
        )
    if failed == "capture" and "cuda_graphs" in automatic and path.cuda_graphs:
        return dataclasses.replace(path, cuda_graphs=False)
    return None


class Fallback(NamedTuple):
    """One move to a safer path: after how many steps, what failed where, and why."""

    after_steps: int
    failed: str  # compile | capture
    where: str  # the training step | the validation forward
    came_from: ExecutionPath
    to: ExecutionPath
    reason: str  # the error, one line

    def summary(self) -> dict:
        return {
            "after_steps": self.after_steps,
            "failed": self.failed,
            "in": self.where,
            "from": self.came_from.describe(),
            "to": self.to.describe(),
            "reason": self.reason,
        }


class Execution:
    """The training step and the validation forward on the path that runs now (`path`; `step`,
    `forward`), built from the model, optimizer, autocast and plan; `fallbacks`: the moves that
    led there. `run_step` and `run_forward` are what the loop and the evaluation call."""

    def __init__(
        self,
        model: nn.Module,
        opt: Optimizer,
        autocast,
        plan: StepPlan,
        path: ExecutionPath,
        start: int,
        automatic: frozenset,
        log: logging.Logger | logging.LoggerAdapter,
    ):
        self.model, self.opt, self.autocast, self.plan = model, opt, autocast, plan
        self.path, self.automatic, self.log = path, automatic, log
        self.fallbacks: list[Fallback] = []
        self.next_k = start  # the step the next training call trains
        self.retired_capture_s = [0.0, 0.0]  # capture time of the steps, forwards replaced
        self.step = self.forward = None
        try:
            self.step, self.forward = self._build(path, start)
        except Exception as e:  # torch.compile itself refuses (a Python it does not support)
            if not path.compile:
                raise
            self._fall_back("compile", "the set-up", e)

    def _build(self, path: ExecutionPath, start: int, old=None, old_forward=None):
        """(the training step, the validation forward) on `path`, from step `start`; a rebuilt
        one keeps its predecessor's side streams (a pack counts two per graphed run)."""
        forward = self.model
        if path.compile:  # dynamic=False: one batch shape per phase, compiled once
            forward = torch.compile(self.model, mode=path.compile_mode, dynamic=False)
        args = (forward, self.opt, self.autocast, self.plan, start)
        if path.cuda_graphs:
            step = GraphedStep(*args, side=old.side if isinstance(old, GraphedStep) else None)
        else:
            step = EagerStep(*args)
            self.opt.set_capturable(False)  # after graphs gave way: the same update, unwarned
        side = getattr(old_forward, "side", None)
        return step, GraphedForward(forward, self.autocast, capture=path.cuda_graphs, side=side)

    @property
    def may_fail(self) -> bool:
        """Whether the path compiles or captures: the eager path has nothing to fall back to."""
        return self.path.compile or self.path.cuda_graphs

    @property
    def graphed(self) -> GraphedStep | None:
        return self.step if isinstance(self.step, GraphedStep) else None

    @property
    def capture_s(self) -> float:
        """Seconds spent recording the training step's graphs, those of replaced steps too."""
        return self.retired_capture_s[0] + getattr(self.step, "capture_s", 0.0)

    @property
    def eval_capture_s(self) -> float:
        return self.retired_capture_s[1] + getattr(self.forward, "capture_s", 0.0)

    def run_step(self, x: torch.Tensor, y: torch.Tensor, k: int, log_point: bool) -> StepOut:
        """Step k on batch (x, y) on the path that runs now; where a call that compiles or
        captures fails, the same step on the next safer path."""
        saved = None
        while True:
            settling = self.may_fail and not self.step.steady(x, y, log_point)
            if settling and saved is None:
                saved = self._snapshot()
            try:
                out = self.step(x, y, k, log_point)
                break
            except Exception as e:
                if not settling or (failed := self._failed(e)) is None:
                    raise
                self._restore(saved)
                self._fall_back(failed, "the training step", e)
            self._free_memory()  # here, where the error no longer holds on to the old step
        self.next_k = k + 1
        return out

    def run_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The validation forward of batch x on the path that runs now; where a call that
        compiles or captures fails, on the next safer path (a forward changes nothing to undo)."""
        while True:
            settling = self.may_fail and not self.forward.steady(x)
            try:
                return self.forward(x)
            except Exception as e:
                if not settling or (failed := self._failed(e)) is None:
                    raise
                self._fall_back(failed, "the validation forward", e)
            self._free_memory()

    def _failed(self, e: Exception) -> str | None:
        """What a settling call's error says failed: the capture, or (on a compiled path)
        compile, since any other error of a first call is compile's to cause there."""
        if isinstance(e, CaptureFailed):
            return "capture"
        return "compile" if self.path.compile else None

    def _fall_back(self, failed: str, where: str, error: Exception) -> None:
        """Move to the next safer path and say so, or raise PathError where none is allowed."""
        path, reason = self.path, first_line(error)
        nxt = next_path(path, failed, self.automatic)
        if nxt is None:
            raise PathError(explicit_failure(failed, where, self.next_k, reason)) from error
        self.fallbacks.append(Fallback(self.next_k, failed, where, path, nxt, reason))
        self.log.warning(
            "%s failed in %s after %d steps (%s): the run goes on %s instead of %s (summary.json's "
            "path_fallback; trainer.%s=false skips the attempt)",
            "torch.compile" if failed == "compile" else "CUDA graph capture",
            where,
            self.next_k,
            reason,
            nxt.describe(),
            path.describe(),
            "compile" if path.compile != nxt.compile else "cuda_graphs",
        )
        self.log.debug("the error in full", exc_info=error)
        self.retired_capture_s[0] += getattr(self.step, "capture_s", 0.0)
        self.retired_capture_s[1] += getattr(self.forward, "capture_s", 0.0)
        self.opt.zero_grad()
        self.path = nxt
        self.step, self.forward = self._build(nxt, self.next_k, self.step, self.forward)

    def _free_memory(self) -> None:
        """Give the dropped graphs' memory pools (a failed capture's too) back to the device."""
        if self.path.device.type == "cuda":
            torch.cuda.empty_cache()

    def _snapshot(self) -> tuple[dict, dict]:
        """The weights, BatchNorm statistics and optimizer state, copied on the device."""
        model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return model, copy.deepcopy(self.opt.inner.state_dict())

    def _restore(self, saved: tuple[dict, dict]) -> None:
        self.model.load_state_dict(saved[0])
        self.opt.load_state_dict(saved[1])  # keeps the optimizer's own execution flags
        self.opt.zero_grad()


def explicit_failure(failed: str, where: str, steps: int, reason: str) -> str:
    """The PathError's message: the setting, what failed, the cause, the fix."""
    if failed == "compile":
        return (
            f"trainer.compile=true: torch.compile failed in {where} after {steps} steps: "
            f"{reason}. Fix what it names (Triton, a C/C++ compiler, Python headers), or use "
            "trainer.compile=null (falls back to the uncompiled path when compile fails) or "
            "trainer.compile=false"
        )
    return (
        f"trainer.cuda_graphs=true: recording {where} as a CUDA graph failed after {steps} steps: "
        f"{reason}. Use trainer.cuda_graphs=null (falls back to the eager step when capture "
        "fails) or trainer.cuda_graphs=false"
    )
