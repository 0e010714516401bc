"""The angle θ turns through in one optimizer step, measured (probes.theory predicts it:
`step_angle`).

    angular_update_step/<stage>   the angle between θ_{k−1} and θ_k of the stage's scale-invariant
                                  kernels, taken as one vector: 2·asin(‖θ̂_k − θ̂_{k−1}‖/2), from
                                  three sums over its tensors, ‖θ_{k−1}‖², ‖θ_k‖² and ‖θ_k −
                                  θ_{k−1}‖² (`stage_angle`); where every tensor turns by ω it is ω,
                                  otherwise a ‖θ‖²-weighted RMS of theirs

A log point at step k has θ_k. θ_{k−1} comes one of two ways, both exact:
  kept       a copy of the kernels taken after step k − 1 (one copy per log interval, the size of
             the kernels; the loop must call the probe on the step before each log point)
  rebuilt    θ_k + u_k, where u_k is step k's own update read back from the optimizer state
             (`adam_update`, `sgd_update`): (1 − d_k)·θ_{k−1} = θ_k + u_k, and the factor 1 − d_k
             does not change a direction. Needs only the log point, but mirrors torch's update
             formula: plain Adam (no amsgrad) and SGD without Nesterov (whose update also needs the
             gradient).
"""

from __future__ import annotations

import math

import torch


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


@torch.no_grad()
def adam_update(
    state: list[dict],
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> list[torch.Tensor]:
    """u_k = lr·m̂_k/(√v̂_k + ε) of the step just taken, from torch.optim.Adam's state of each
    tensor (exp_avg, exp_avg_sq, step after the step), bias corrections as torch applies them."""
    out = []
    for st in state:
        k = float(st["step"])
        denom = st["exp_avg_sq"].sqrt() / math.sqrt(1 - betas[1] ** k) + eps
        out.append(st["exp_avg"] / denom * (lr / (1 - betas[0] ** k)))
    return out


@torch.no_grad()
def sgd_update(state: list[dict], lr: float) -> list[torch.Tensor]:
    """u_k = lr·b_k of the step just taken, from torch.optim.SGD's momentum buffers (Nesterov not
    covered)."""
    return [st["momentum_buffer"] * lr for st in state]


@torch.no_grad()
def rebuilt_previous(now: list[torch.Tensor], update: list[torch.Tensor]) -> list[torch.Tensor]:
    """θ_k + u_k = (1 − d_k)·θ_{k−1}: the previous step's weights up to a factor that leaves angles
    alone."""
    return torch._foreach_add(now, update)


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
