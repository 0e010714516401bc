"""Shadow BatchNorm statistics: extra running averages at other momenta, fed by the same training
batches as the real ones and never used in training, so one run gives the lag at every momentum.

Each BatchNorm keeps a stack of M running means and M running variances (M × C). After each training
batch, every row takes the batch's per-channel mean and unbiased variance with its own momentum m,
torch's rule r ← (1 − m)·r + m·b, starting where torch starts (mean 0, var 1). A validation
evaluates the same weights once per row, its statistics swapped into the layer's running buffers.

The batch's statistics need not be recomputed: BatchNorm has just folded them into its running
buffers with its own momentum m₀, so b = (r_new − (1 − m₀)·r_old)/m₀ from a copy of r_old taken
before the forward (C values per layer; `batch_from_running`). Its float32 rounding error, ≈
1e-7·|r|/m₀, is far below the batch noise. The batch noise itself, σ_b² per channel, is one more EMA
(`update_noise`). Cost per step: copying the running buffers and one lerp of the stacks, O(M·C) for
C channels in all (≈ 700 in ResNet20, 5 momenta: a few thousand values), no pass over activations.
"""

from __future__ import annotations

import torch

MOMENTA = (0.001, 0.003, 0.03, 0.3)  # around Keras' 0.01, from a 1,000-step memory to a 3-step one


@torch.no_grad()
def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel of an (N, C, ...) input: the mean and the unbiased variance BatchNorm folds
    in."""
    dims = [d for d in range(x.ndim) if d != 1]
    return x.mean(dims), x.var(dims, unbiased=True)


def batch_from_running(old: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """b = (r_new − (1 − m₀)·r_old)/m₀: the batch statistic a running buffer has just taken in."""
    return (new - (1 - momentum) * old) / momentum


def shadow_stack(momenta: tuple[float, ...], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh (mean, var) stacks, M × C, as torch initialises running statistics: mean 0, var 1."""
    return torch.zeros(len(momenta), channels), torch.ones(len(momenta), channels)


def update_shadows(
    stack: torch.Tensor,
    batch: torch.Tensor,
    momenta: tuple[float, ...] | torch.Tensor,
) -> torch.Tensor:
    """(1 − m)·stack + m·batch for each row's own m: the stack after one batch (M × C; a new
    tensor)."""
    m = torch.as_tensor(momenta, dtype=stack.dtype, device=stack.device).unsqueeze(1)
    return torch.lerp(stack, batch.unsqueeze(0).expand_as(stack), m)


def update_noise(
    noise_var: torch.Tensor,
    batch: torch.Tensor,
    prev_batch: torch.Tensor,
    momentum: float = 0.01,
) -> torch.Tensor:
    """An EMA of (b_k − b_{k−1})²/2 per channel: the variance σ_b² of one batch's statistic about
    its mean, which sets an EMA's noise floor σ_b²·m/(2 − m) (probes.theory.ema_noise_var).
    Consecutive batches are independent draws; a drift of r per step adds only r²/2."""
    return torch.lerp(noise_var, (batch - prev_batch).pow(2) / 2, momentum)
