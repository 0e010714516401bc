"""The chain's links (b) and (c) at a validation, per BatchNorm channel, in tensors: how far the
exact statistics moved since the previous validation, the lag an EMA of momentum m must show for
that movement, and the floors that noise puts under a measured lag (probes.theory has each closed
form for one number; these are the same per channel, on the device).

Per channel c, with μ the exact mean of the layer's input over the augmented reference images
(probes.bn_staleness.AugmentedReference), s = σ_ref,c = √(var_ref,c + ε) its scale, validations i
at steps s_i, and an EMA of momentum m (q = 1 − m) that has seen n batches:
    drift        (μ_i − μ_{i−1})/(s_i − s_{i−1}) / σ_ref: movement per step, in stds (link b)
    lag          (μ_EMA − μ_i)/σ_ref (sign: the EMA's offset; RMS is what is recorded)
    predicted    L_i = q^n·L_{i−1} + (1 − q^n)·r_i/m with r_i the drift per step in raw units and n
                 = s_i − s_{i−1} (theory.ema_lag_path: exact for a path linear between
                 validations), started from the measured lag at the run's first validation: the
                 path before it is unknown. Its weight on that start is q^(s_i − s_1), so the
                 report leaves out validations where it is above 5 % (analysis.chain)
    noise floor  √(σ_b²·m/(2 − m)·(1 − q^{2n}))/σ_ref: the scatter the EMA keeps of the batch noise
                 σ_b² (theory.ema_noise_var); √(σ_b²·B/N_ref)/σ_ref the reference's own sampling
                 error (B images a batch, N_ref reference images: a mean over N_ref images scatters
                 B/N_ref as much as one over a batch)
A measured lag squared is then expected near predicted² + noise² + reference² (independent parts).
Per stage each figure is the RMS over the stage's channels (all layers' channels alike).
"""

from __future__ import annotations

import torch


def stage_rms(x: torch.Tensor, channels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RMS over each stage's channels of x (..., C): one tensor (...) per stage."""
    return {s: x[..., idx].pow(2).mean(-1).sqrt() for s, idx in channels.items()}


def predicted_lag(
    lag: torch.Tensor,
    mean: torch.Tensor,
    prev_mean: torch.Tensor,
    steps: int,
    momenta: torch.Tensor,
) -> torch.Tensor:
    """The EMA lag L (sets × C, raw units) at this validation from L at the previous one, `steps`
    steps before, and the exact mean then and now, moving linearly between them: q^n·L +
    (1 − q^n)·r/m (module docstring). `momenta` (sets × 1 or sets × C) per set."""
    q = torch.pow(1 - momenta, steps)
    rate = (mean - prev_mean) / steps
    return q * lag + (1 - q) * rate.unsqueeze(0) / momenta


def ema_noise_var(batch_var: torch.Tensor, momenta: torch.Tensor, seen: torch.Tensor):
    """σ_b²·m/(2 − m)·(1 − q^{2n}) per set and channel: `seen` (sets × 1) batches per set."""
    q = 1 - momenta
    return batch_var.unsqueeze(0) * momenta / (2 - momenta) * (1 - torch.pow(q, 2 * seen))
