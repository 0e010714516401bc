"""The angle θ turns through in one optimizer step, measured against Kosson et al.'s prediction
(probes.theory), at every log point (probes.step_angle=true):

    angular_update_step/<stage>   the angle between θ_{k−1} and θ_k of the stage's scale-invariant
                                  kernels (probes.scale_invariance), taken as one vector:
                                  2·asin(‖θ̂_k − θ̂_{k−1}‖/2), from three sums over its tensors,
                                  ‖θ_{k−1}‖², ‖θ_k‖² and ‖θ_k − θ_{k−1}‖² (`stage_angle`); where
                                  every tensor turns by ω it is ω, otherwise a ‖θ‖²-weighted RMS
                                  of theirs
    angular_update_step_pred      √(2·d_eff·(1 − β)/(1 + β)) with step k's own lr_k and d_k
                                  (theory.step_angle of theory.long_run_shrink); none for Adam + L2

θ_{k−1} is kept: after the step before each log point the probe copies the scale-invariant kernels
(`after_step`; one foreach copy, the size of those kernels, once per log interval), so the angle is
exact for any optimizer. The copy runs eagerly between steps: with CUDA graphs it is one kernel
launch between two replays, and torch.compile never sees it. Only scale-invariant kernels count: the
prediction holds for them alone (a v2 bottleneck's conv3 and the projections are left out; the head
has none, so no angle). summary.json's probes.step_angle says which kernels each stage counts and
their share of its decayed values.
"""

from __future__ import annotations

import math

import torch

from runner.probes import LogPoint, Probe, StepPoint, Subject
from runner.probes.scale_invariance import invariant_stages, stage_invariance
from runner.probes.theory import long_run_shrink, step_angle


def stage_angle(prev_sq: float, now_sq: float, diff_sq: float) -> float | None:
    """The angle between two vectors from ‖a‖², ‖b‖² and ‖b − a‖² (precise for small angles, unlike
    the arc cosine of a float32 dot product); None for a zero vector or a non-finite sum."""
    if not (prev_sq > 0 and now_sq > 0) or not math.isfinite(diff_sq):
        return None
    a, b = math.sqrt(prev_sq), math.sqrt(now_sq)
    chord_sq = max(0.0, diff_sq - (a - b) ** 2) / (a * b)  # ‖â − b̂‖²
    return 2 * math.asin(min(1.0, math.sqrt(chord_sq) / 2))


@torch.no_grad()
def step_sums(prev: list[torch.Tensor], now: list[torch.Tensor]) -> torch.Tensor:
    """Per tensor (3 × n, float32, on the device): ‖θ_prev‖², ‖θ_now‖², ‖θ_now − θ_prev‖²."""
    diff = torch._foreach_sub(now, prev)
    sq = [torch.stack(torch._foreach_norm(x)).float().pow(2) for x in (prev, now, diff)]
    return torch.stack(sq)


def stage_angles(sums: torch.Tensor, stages: dict[str, list[int]]) -> dict[str, float]:
    """angular_update_step/<stage> from `step_sums` and the positions of each stage's
    scale-invariant tensors."""
    out = {}
    for name, idx in stages.items():
        prev_sq, now_sq, diff_sq = (float(x) for x in sums[:, idx].sum(1))
        angle = stage_angle(prev_sq, now_sq, diff_sq)
        if angle is not None:
            out[f"angular_update_step/{name}"] = angle
    return out


class StepAngle(Probe):
    """angular_update_step/<stage> and angular_update_step_pred (module docstring)."""

    name = "step_angle"

    def __init__(self, subject: Subject):
        self.opt, self.plan, self.model = subject.opt, subject.plan, subject.model
        stages = invariant_stages(subject.model, subject.opt.regularized)
        used = sorted({i for idx in stages.values() for i in idx})
        at = {i: j for j, i in enumerate(used)}
        self.tensors = [subject.opt.regularized[i] for i in used]
        device = self.tensors[0].device if self.tensors else None
        self.stages = {
            s: torch.tensor([at[i] for i in idx], device=device) for s, idx in stages.items()
        }
        self.prev = [t.detach().clone() for t in self.tensors]  # θ when the run (re)starts
        self.prev_step: int | None = None  # None: taken at setup, before the next step
        self.sums: tuple[int, dict] | None = None

    @torch.no_grad()
    def after_step(self, point: StepPoint) -> None:
        """At a log point: the three sums of each stage against θ_{k−1}; before one: θ_k kept."""
        if not self.tensors:
            return
        if self.prev_step is None:
            self.prev_step = point.step - 1
        if point.log_point and self.prev_step == point.step - 1:
            sums = step_sums(self.prev, self.tensors)
            self.sums = (point.step, {s: sums[:, i].sum(1) for s, i in self.stages.items()})
        if point.log_next:
            torch._foreach_copy_(self.prev, self.tensors)
            self.prev_step = point.step

    def at_log(self, point: LogPoint) -> dict[str, torch.Tensor]:
        if self.sums is None or self.sums[0] != point.step:
            return {}
        return {f"step_sums/{s}": t for s, t in self.sums[1].items()}

    def read_log(self, values: dict, point: LogPoint) -> dict[str, float]:
        out = {}
        for key, (prev_sq, now_sq, diff_sq) in values.items():
            angle = stage_angle(prev_sq, now_sq, diff_sq)
            if angle is not None:
                out["angular_update_step/" + key.split("/", 1)[1]] = angle
        if out and (pred := self.predicted(point.step)) is not None:
            out["angular_update_step_pred"] = pred
        return out

    def predicted(self, step: int) -> float | None:
        """Kosson et al.'s per-step angle at equilibrium for the step that made `step` steps."""
        lr, d = self.plan.at(step - 1)
        shrink = long_run_shrink(self.opt.algorithm, d, lr, self.plan.l2, self.opt.momentum)
        return step_angle(shrink, self.opt.momentum)

    def facts(self) -> dict:
        """Per stage the kernels C counts, and their share of the stage's decayed values."""
        return {
            s: {
                "counted": row["invariant"],
                "left_out": [k for k in row["kernels"] if k not in row["invariant"]],
                "counted_values": row["invariant_values"],
                "values": row["values"],
                "share": row["share"],
            }
            for s, row in stage_invariance(self.model).items()
        }
