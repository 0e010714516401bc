"""How much of Adam's update the L2 term makes, under Adam + L2 (core.update_rule: g ← g + λ₂·θ,
then Adam divides the sum by √v̂). Two figures, each from what a log point has:

    l2_update_ratio/<stage>    mean over the stage's values of |λ₂θ|/(√v̂ + ε): the size of the L2
                               term's part of the update m̂/(√v̂ + ε), in units of lr_t (m̂ carries
                               λ₂θ, θ being nearly constant over β1's memory). Needs θ, Adam's
                               exp_avg_sq and its step count.
    l2_dominant_share/<stage>  the share of the stage's values with |λ₂θ| > √(‖g‖²/n), the RMS of
                               their tensor's data gradient: where the L2 term outweighs the data
                               gradient, so Adam's update turns into a sign step towards 0. Needs θ
                               and the per-tensor ‖g‖² of the data gradient at that step
                               (core.update_rule.note_l2_terms has it).

At the three test points (c = |λ₂θ| a value's L2 term, σ the data gradient's noise):
    L2 dominant, c/σ = 10            ratio c/√(c² + σ²) = 0.995, share 1
    data gradient −c + σ·noise       ratio c/σ = 10 (> 1: L2 balanced by the data), share 0
    L2 negligible, c/σ = 0.01        ratio 0.01, share 0
The ratio reads above 1 only when the data gradient cancels part of the L2 term; the share is what
separates dominance from balance. They replace l2_sign_fraction, the share with (λ₂θ)² > v̂, which
reads 0 under dominance (v̂ includes c² itself, plus the noise) and 1 under balance.
Limits: the share compares each value with its tensor's RMS gradient, not its own (Adam keeps no
second moment of the data gradient alone); one batch's ‖g‖² is a noisy estimate of the mean square,
averaged over the tensor's values.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def l2_update_sums(
    theta: list[torch.Tensor],
    exp_avg_sq: list[torch.Tensor],
    step: float | torch.Tensor,
    beta2: float,
    eps: float,
    l2: float,
) -> torch.Tensor:
    """Per tensor Σ |λ₂θ|/(√v̂ + ε), v̂ = exp_avg_sq/(1 − β2^step) (float32, on the device). `step`
    is Adam's step count, a number or a tensor (fused and capturable Adam keep it on the device:
    it is read there, never on the host)."""
    step = torch.as_tensor(step).to(theta[0].device, torch.float32)
    # 1 − β2^k as −expm1(k·ln β2): accurate in float32 (any device), where 1 − β2^k is not
    correction = (-torch.expm1(step * math.log(beta2))).sqrt()
    sums = []
    for t, v in zip(theta, exp_avg_sq):
        sums.append((t.abs() * l2 / (v.sqrt() / correction + eps)).sum().float())
    return torch.stack(sums)


@torch.no_grad()
def l2_dominant_counts(
    theta: list[torch.Tensor],
    grad_sq: torch.Tensor,
    l2: float,
) -> torch.Tensor:
    """Per tensor the number of values with |λ₂θ| > √(‖g‖²/n), ‖g‖² its data gradient's squared
    norm."""
    counts = [(t.abs() * l2 > (g / t.numel()).sqrt()).sum().float() for t, g in zip(theta, grad_sq)]
    return torch.stack(counts)


def stage_figures(
    update_sums: torch.Tensor,
    dominant: torch.Tensor,
    stages: dict[str, list[int]],
    sizes: dict[str, int],
) -> dict[str, float]:
    """l2_update_ratio/<stage> and l2_dominant_share/<stage> from the per-tensor sums and counts."""
    out = {}
    for name, idx in stages.items():
        out[f"l2_update_ratio/{name}"] = float(update_sums[idx].sum()) / sizes[name]
        out[f"l2_dominant_share/{name}"] = float(dominant[idx].sum()) / sizes[name]
    return out
