"""Adam and SGD with L2 regularization and decoupled weight decay, each convention stated.

Notation: α = base lr (`lr`), η_t = schedule multiplier, lr_t = α·η_t, g = gradient of the data loss.

L2 (`l2` = λ₂, penalty λ₂/2·‖θ‖²): g ← g + λ₂·θ_{t-1} before the optimizer sees it, the formula of
torch.optim.Adam/SGD's own `weight_decay` (applied here so it reads θ before the decoupled shrink).
Adam then divides the L2 term by √v̂ like the rest of the gradient: that is why L2 ≠ weight decay
under Adam. The update itself is torch.optim.Adam/SGD (fused kernels on CUDA; see Optimizer for the lr they read).

Decoupled decay (`wd` = λ): before the optimizer's update, θ ← θ·(1 − d_t) with
    wd_scaling=schedule   d_t = η_t·λ     the paper (Loshchilov & Hutter 2019, Alg. 2 line 12; SGDW Alg. 1 line 9)
    wd_scaling=lr         d_t = lr_t·λ    torch.optim.AdamW, Keras AdamW (bit-for-bit torch's AdamW)
    wd_scaling=none       d_t = λ         TF-Addons AdamW/SGDW
With wd_normalized=true, `wd` is λ_norm and λ = λ_norm·√(b/(B·T)) (paper, Appendix B.1; b batch size,
B training images, T epochs of the run or of the current warm-restart period). l2_normalized=true
reads `l2` the same way, with T the whole run, so one grid of λ_norm serves both (experiment=paper_grid).

Keras `l2(x)` adds x·‖θ‖² to the loss, i.e. λ₂ = 2x here.
"""

from __future__ import annotations

import math
import struct
from typing import Callable

import torch
from torch import nn


def split_params(model: nn.Module, decay_on: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(regularized, other). weights: conv and linear kernels (ndim > 1), not BN or biases (not the Keras example,
    which leaves its Dense head alone); conv: conv kernels only (the Keras example's kernel_regularizer on Conv2D);
    all: every parameter, BN and biases included (an optimizer's weight_decay over model.parameters())."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_on == "all":
        return params, []
    keep = (lambda p: p.ndim == 4) if decay_on == "conv" else (lambda p: p.ndim > 1)
    return [p for p in params if keep(p)], [p for p in params if not keep(p)]


def normalized_lambda(lam: float, batch_size: int, n_train: int, epochs: float) -> float:
    """The paper's normalization (Appendix B.1): λ = λ_norm·√(b/(B·T))."""
    return lam * math.sqrt(batch_size / (n_train * epochs))


def decoupled_rate(
    wd: float,
    wd_scaling: str,
    lr: float,
    *,
    normalized: bool = False,
    batch_size: int = 1,
    n_train: int = 1,
    period: Callable[[float], float] = lambda t: 1.0,
) -> Callable[[float, float], float]:
    """d(t, η_t): the fraction by which decayed weights shrink at the step taken at epoch t."""

    def lam(t: float) -> float:
        return normalized_lambda(wd, batch_size, n_train, period(t)) if normalized else wd

    if wd_scaling == "schedule":
        return lambda t, eta: eta * lam(t)
    if wd_scaling == "lr":
        return lambda t, eta: (lr * eta) * lam(t)
    if wd_scaling == "none":
        return lambda t, eta: lam(t)
    raise ValueError(f"unknown wd_scaling {wd_scaling!r}")


EXECUTION_FLAGS = ("fused", "capturable", "foreach", "differentiable")  # how torch.optim runs, not what it learned


def _round(x: float, dtype: torch.dtype) -> float:
    """x rounded to `dtype` (float32 or float64), as a Python float."""
    return struct.unpack("f", struct.pack("f", x))[0] if dtype == torch.float32 else float(x)


class Optimizer:
    """torch.optim.Adam or SGD plus the L2 gradient term and the decoupled shrink, one `step` per batch.

    `fused` picks torch's fused kernels (default: on CUDA; torch has them on CPU too, which is how the tests run
    the GPU's code path). The fused kernels read a tensor lr as float32, so with fused=True every lr_t is rounded
    to float32 in `lr_value`, the one place both the eager step and the device-side one (CUDA graphs: `apply` with
    tensors) take it from: the two paths then apply the identical update, bit for bit. 1 − d_t is rounded to the
    weights' dtype in `keep_value` for the same reason."""

    def __init__(
        self,
        model: nn.Module,
        *,
        algorithm: str,
        lr: float,
        l2: float,
        wd: float,
        decay: Callable[[float, float], float],
        decay_on: str = "weights",
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.9,
        nesterov: bool = False,
        fused: bool | None = None,
        capturable: bool = False,
    ):
        self.lr, self.wd, self.l2, self.decay = lr, wd, l2, decay
        self.l2_terms: torch.Tensor | None = None  # note_l2_terms
        self.regularized, other = split_params(model, decay_on)
        self.params = params = self.regularized + other
        self.fused = params[0].is_cuda if fused is None else fused
        # the dtype of a device-side lr_t: what the fused kernels read, else the weights' own
        self.lr_dtype = torch.float32 if self.fused else params[0].dtype
        if algorithm == "adam":
            # capturable: Adam's step counter stays on the device, so a CUDA graph can replay the step (graphs.py)
            cap = {"capturable": True} if capturable and params[0].is_cuda else {}
            self.inner = torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, fused=self.fused, **cap)
        elif algorithm == "sgd":
            self.inner = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, fused=self.fused)
        else:
            raise ValueError(f"unknown algorithm {algorithm!r}")

    def lr_value(self, lr_t: float) -> float:
        """lr_t as the update applies it: rounded to float32 for the fused kernels, exact otherwise."""
        return _round(lr_t, self.lr_dtype) if self.fused else lr_t

    def keep_value(self, d: float) -> float:
        """1 − d_t as the shrink applies it: rounded to the weights' dtype (what θ·(1 − d_t) multiplies by)."""
        return _round(1.0 - d, self.params[0].dtype)

    @torch.no_grad()
    def step(self, t: float, eta: float) -> float:
        """One update at epoch t with multiplier η_t; gradients must be in .grad. Returns the shrink d_t applied."""
        d = self.decay(t, eta) if self.wd else 0.0
        self.apply(self.lr_value(self.lr * eta), self.keep_value(d) if d else None)
        return d

    @torch.no_grad()
    def apply(self, lr_t, keep) -> None:
        """The update with lr_t and keep = 1 − d_t (None: no shrink) as given: Python numbers from `lr_value` and
        `keep_value`, or 0-d device tensors holding them, which a CUDA graph can capture (engine.step; pass the same
        two tensors at every call). Gradients must be in .grad."""
        for g in self.inner.param_groups:
            g["lr"] = lr_t
        if self.l2:  # g + λ₂·θ_{t-1}, torch.optim's own weight_decay formula, taken before the shrink touches θ
            torch._foreach_add_([p.grad for p in self.regularized], self.regularized, alpha=self.l2)
        if keep is not None:  # θ_{t-1}·(1 − d_t), then the optimizer's step: θ_t = θ_{t-1} − d_t·θ_{t-1} − update(g)
            torch._foreach_mul_(self.regularized, keep)
        self.inner.step()

    def zero_grad(self) -> None:
        self.inner.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        state = self.inner.state_dict()
        for g in state["param_groups"]:  # a graph's lr tensor is saved as the plain number it holds
            if torch.is_tensor(g["lr"]):
                g["lr"] = g["lr"].item()
        return state

    def load_state_dict(self, state: dict) -> None:
        """The moments and step counts of `state`, under this optimizer's own execution flags: torch.optim's
        load_state_dict takes fused/capturable/foreach from the checkpoint, so a checkpoint of an eager or CPU run
        continued with CUDA graphs would fail at capture ("capturable is False"). Adam's step counts move to where
        the flags want them (the weights' device as float32 for fused or capturable kernels, else the host)."""
        flags = [{k: g[k] for k in EXECUTION_FLAGS if k in g} for g in self.inner.param_groups]
        self.inner.load_state_dict(state)
        for group, own in zip(self.inner.param_groups, flags):
            group.update(own)
            on_device = group.get("fused") or group.get("capturable")
            for p in group["params"]:
                st = self.inner.state.get(p, {})
                if torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(dtype=torch.float32, device=p.device) if on_device else st["step"].cpu()

    @torch.no_grad()
    def note_l2_terms(self) -> None:
        """Before the update, with the data gradient in .grad: per regularized tensor ‖g‖², ‖λ₂θ‖² and the number of
        values with (λ₂θ)² > v̂ (Adam's bias-corrected second moment, where Adam + L2 turns into a sign step), kept
        in `l2_terms` (3 × n, on the device; one buffer, so a CUDA graph's replays refill it). Adam + L2 only."""
        state = self.inner.state.get(self.regularized[0]) if self.regularized else None
        if not self.l2 or not isinstance(self.inner, torch.optim.Adam) or not state:
            return
        beta2 = self.inner.param_groups[0]["betas"][1]
        step = torch.as_tensor(state["step"], device=self.regularized[0].device, dtype=torch.float32)
        v_hat = torch._foreach_div([self.inner.state[p]["exp_avg_sq"] for p in self.regularized], 1 - beta2**step)
        l2_sq = torch._foreach_mul(self.regularized, self.regularized)
        torch._foreach_mul_(l2_sq, self.l2**2)
        over = torch._foreach_sign(torch._foreach_sub(l2_sq, v_hat))  # +1 where (λ₂θ)² > v̂
        torch._foreach_add_(over, 1.0)
        terms = torch.stack([
            torch.stack(torch._foreach_norm([p.grad for p in self.regularized])).float().pow(2),
            torch.stack(torch._foreach_norm(self.regularized)).float().pow(2) * self.l2**2,
            torch.stack(torch._foreach_norm(over, 1)).float() / 2,  # Σ (sign + 1)/2: the count (ties count ½)
        ])  # fmt: skip
        if self.l2_terms is None:
            self.l2_terms = terms
        else:
            self.l2_terms.copy_(terms)

    @torch.no_grad()
    def weight_stats(self, stages: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """weight_norm ‖θ‖ and l2_penalty λ₂/2·‖θ‖² of the regularized weights, and weight_norm/<name> for each
        index tensor of positions in self.regularized in `stages`: one foreach norm, device tensors, no host sync."""
        norms = torch.stack(torch._foreach_norm(self.regularized)).float() if self.regularized else torch.zeros(1)
        sq = norms.pow(2).sum()
        out = {"weight_norm": sq.sqrt(), "l2_penalty": 0.5 * self.l2 * sq}
        for name, idx in (stages or {}).items():
            out[f"weight_norm/{name}"] = norms[idx].norm()
        return out


def l2_stage_figures(terms: torch.Tensor, stages: dict[str, torch.Tensor], sizes: dict[str, int]) -> dict:
    """Per stage from Optimizer.l2_terms: l2_grad_ratio/<stage> = ‖λ₂θ‖/‖g‖ and l2_sign_fraction/<stage> = the share
    of its values with (λ₂θ)² > v̂ (device tensors)."""
    out = {}
    for name, idx in stages.items():
        g_sq, l2_sq, over = terms[:, idx].sum(1)
        out[f"l2_grad_ratio/{name}"] = (l2_sq / g_sq).sqrt()
        out[f"l2_sign_fraction/{name}"] = over / sizes[name]
    return out


def describe(
    *,
    algorithm: str,
    wd: float,
    l2: float,
    wd_scaling: str,
    wd_normalized: bool,
    n_tensors: int,
    n_values: int,
    lam_now: float | None = None,
) -> list[str]:
    """One plain sentence per mechanism, as printed at start and stored in summary.json."""
    where = f"on {n_tensors} tensors ({n_values / 1e6:.2f} M values)"
    lam = f"{wd:g}" if not wd_normalized else f"λ_norm·√(b/(B·T)) = {lam_now:.3g} (λ_norm={wd:g})"
    rule = {"schedule": f"η_t·{lam}", "lr": f"lr_t·{lam}", "none": lam}[wd_scaling]
    out = [f"decoupled decay: θ ← θ·(1 − {rule}) {where} (wd_scaling={wd_scaling})" if wd else "decoupled decay: off"]
    how = "divided by √v̂ with the rest of the gradient" if algorithm == "adam" else "scaled by lr_t"
    out.append(f"L2: g ← g + {l2:g}·θ, penalty {l2 / 2:g}·‖θ‖², {where}, {how}" if l2 else "L2: off")
    return out


def rounding_note(decays: list[float], threshold: float = 0.01) -> str | None:
    """A sentence when float32 weights apply a run's decoupled decay off by more than `threshold` in total.
    θ·(1 − d_t) multiplies by 1 − d_t rounded to float32 (a grid of 2^-24 ≈ 6e-8 just below 1; torch.optim.AdamW
    and Keras alike), so the shrink applied is a_t = 1 − fl32(1 − d_t): 0 for d_t ≤ 2^-25 ≈ 3e-8, 1.19e-7 for
    d_t = 1e-7. The sentence judges the integrated error Σ_t (a_t − d_t) / Σ_t d_t over the run, the share of the
    whole decay that is lost or added; a few tiny shrinks at the end of a schedule weigh nothing in it. (θ's own
    rounding of the product is unbiased across values and left out.) None within the threshold or without decay."""
    used = [d for d in decays if d > 0]
    if not used:
        return None
    applied = [1.0 - _round(1.0 - d, torch.float32) for d in used]
    err = (sum(applied) - sum(used)) / sum(used)
    if abs(err) <= threshold:
        return None
    lost = sum(a == 0 for a in applied)
    note = (
        f"float32 rounding: float32 weights apply {100 * (1 + err):.1f} % of the decoupled decay the run asks for "
        f"(Σ(applied − intended)/Σ intended = {100 * err:+.1f} %; per-step d_t from {max(used):.2g} down to "
        f"{min(used):.2g}, each applied as 1 − float32(1 − d_t))"
    )
    return note + (f"; no shrink at all on the {lost} steps with d_t ≤ 3e-8" if lost else "")
