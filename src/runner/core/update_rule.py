"""The update of step k: Adam or SGD with the L2 term and the decoupled shrink, each convention
stated. What lr_t and d_t a step applies is core.step_plan's decision; this is how it applies them.

Notation: α = base lr (`lr`), η_t = schedule multiplier, lr_t = α·η_t, g = gradient of the data
loss.

L2 (`l2` = λ₂, penalty λ₂/2·‖θ‖²): g ← g + λ₂·θ_{t-1} before the optimizer sees it, the formula of
torch.optim.Adam/SGD's own `weight_decay` (applied here so it reads θ before the decoupled
shrink). Adam then divides the L2 term by √v̂ like the rest of the gradient: that is why L2 is not
weight decay under Adam.

Decoupled decay: θ ← θ·(1 − d_t) before the optimizer's update, then the update itself,
torch.optim.Adam or SGD (fused kernels on CUDA): θ_t = θ_{t-1} − d_t·θ_{t-1} − update(g).

Keras `l2(x)` adds x·‖θ‖² to the loss, i.e. λ₂ = 2x here.
"""

from __future__ import annotations

import struct

import torch
from torch import nn


def split_params(model: nn.Module, decay_on: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(regularized, other). weights: conv and linear kernels (ndim > 1), not BN or biases (not
    the Keras example, which leaves its Dense head alone); conv: conv kernels only (the Keras
    example's kernel_regularizer on Conv2D); all: every parameter, BN and biases included (an
    optimizer's weight_decay over model.parameters())."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_on == "all":
        return params, []
    keep = (lambda p: p.ndim == 4) if decay_on == "conv" else (lambda p: p.ndim > 1)
    return [p for p in params if keep(p)], [p for p in params if not keep(p)]


EXECUTION_FLAGS = ("fused", "capturable", "foreach", "differentiable")  # how, not what it learned


def _round(x: float, dtype: torch.dtype) -> float:
    """x rounded to `dtype` (float32 or float64), as a Python float."""
    return struct.unpack("f", struct.pack("f", x))[0] if dtype == torch.float32 else float(x)


class Optimizer:
    """torch.optim.Adam or SGD plus the L2 gradient term and the decoupled shrink.

    `fused` picks torch's fused kernels (default: on CUDA; torch has them on CPU too, which is how
    the tests run the GPU's code path). The fused kernels read a tensor lr as float32, so with
    fused=True every lr_t is rounded to float32 in `lr_value`, the one place both the eager step
    and the device-side one (CUDA graphs: `apply` with tensors) take it from: the two paths then
    apply the identical update, bit for bit. 1 − d_t is rounded to the weights' dtype in
    `keep_value` for the same reason."""

    def __init__(
        self,
        model: nn.Module,
        *,
        algorithm: str,
        l2: float = 0.0,
        decay_on: str = "weights",
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.9,
        nesterov: bool = False,
        fused: bool | None = None,
        capturable: bool = False,
    ):
        self.algorithm, self.l2 = algorithm, l2
        self.regularized, other = split_params(model, decay_on)
        self.params = params = self.regularized + other
        self.fused = params[0].is_cuda if fused is None else fused
        # the dtype of a device-side lr_t: what the fused kernels read, else the weights' own
        self.lr_dtype = torch.float32 if self.fused else params[0].dtype
        if algorithm == "adam":
            # capturable: Adam's step counter stays on the device, so a CUDA graph can replay it
            cap = {"capturable": True} if capturable and params[0].is_cuda else {}
            self.inner = torch.optim.Adam(
                params, lr=0.0, betas=tuple(betas), eps=eps, fused=self.fused, **cap
            )
            self.momentum = betas[0]  # Adam's β1: the momentum of its update
        elif algorithm == "sgd":
            self.inner = torch.optim.SGD(
                params, lr=0.0, momentum=momentum, nesterov=nesterov, fused=self.fused
            )
            self.momentum = momentum
        else:
            raise ValueError(f"unknown algorithm {algorithm!r}")

    def lr_value(self, lr_t: float) -> float:
        """lr_t as the update applies it: rounded to float32 for the fused kernels, else exact."""
        return _round(lr_t, self.lr_dtype) if self.fused else lr_t

    def keep_value(self, d: float) -> float:
        """1 − d_t as the shrink applies it: rounded to the weights' dtype (what θ·(1 − d_t)
        multiplies by)."""
        return _round(1.0 - d, self.params[0].dtype)

    @torch.no_grad()
    def apply(self, lr_t, keep) -> None:
        """The update with lr_t and keep = 1 − d_t (None: no shrink) as given: Python numbers from
        `lr_value` and `keep_value`, or 0-d device tensors holding them, which a CUDA graph can
        capture (engine.step; pass the same two tensors at every call). Gradients in .grad."""
        for g in self.inner.param_groups:
            g["lr"] = lr_t
        if self.l2:  # g + λ₂·θ_{t-1}, torch.optim's weight_decay formula, before the shrink
            grads = [p.grad for p in self.regularized]
            torch._foreach_add_(grads, self.regularized, alpha=self.l2)
        if keep is not None:  # θ_{t-1}·(1 − d_t), then the optimizer's step
            torch._foreach_mul_(self.regularized, keep)
        self.inner.step()

    def zero_grad(self) -> None:
        self.inner.zero_grad(set_to_none=True)

    def set_capturable(self, on: bool) -> None:
        """Adam's capturable flag, for a run whose CUDA graphs gave way to the eager step
        (engine.execution): the same update, without torch's warning that a capturable optimizer
        runs uncaptured; the step counts move where the flag wants them."""
        groups = [g for g in self.inner.param_groups if "capturable" in g]
        if not groups or all(g["capturable"] == on for g in groups):
            return
        for g in groups:
            g["capturable"] = on
        self.load_state_dict(self.inner.state_dict())

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """‖g‖ of every parameter (self.params' order) as one device vector, no host sync."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        return torch.stack(torch._foreach_norm(grads)).float()

    @torch.no_grad()
    def weight_norms(self) -> torch.Tensor:
        """‖θ‖ of every regularized tensor as one device vector (empty without any)."""
        if not self.regularized:
            return torch.zeros(0, device=self.params[0].device)
        return torch.stack(torch._foreach_norm(self.regularized)).float()

    def state_dict(self) -> dict:
        state = self.inner.state_dict()
        for g in state["param_groups"]:  # a graph's lr tensor is saved as the number it holds
            if torch.is_tensor(g["lr"]):
                g["lr"] = g["lr"].item()
        return state

    def load_state_dict(self, state: dict) -> None:
        """The moments and step counts of `state`, under this optimizer's own execution flags:
        torch.optim's load_state_dict takes fused/capturable/foreach from the checkpoint, so a
        checkpoint of an eager or CPU run continued with CUDA graphs would fail at capture
        ("capturable is False"). Adam's step counts move to where the flags want them (the
        weights' device as float32 for fused or capturable kernels, else the host)."""
        flags = [{k: g[k] for k in EXECUTION_FLAGS if k in g} for g in self.inner.param_groups]
        self.inner.load_state_dict(state)
        for group, own in zip(self.inner.param_groups, flags):
            group.update(own)
            on_device = group.get("fused") or group.get("capturable")
            for p in group["params"]:
                st = self.inner.state.get(p, {})
                if torch.is_tensor(st.get("step")):
                    step = st["step"]
                    st["step"] = (
                        step.to(device=p.device, dtype=torch.float32) if on_device else step.cpu()
                    )


def rounding_note(decays: list[float], threshold: float = 0.01) -> str | None:
    """A sentence when float32 weights apply a run's decoupled decay off by more than `threshold`
    in total. θ·(1 − d_t) multiplies by 1 − d_t rounded to float32 (a grid of 2^-24 ≈ 6e-8 just
    below 1; torch.optim.AdamW and Keras alike), so the shrink applied is a_t = 1 − fl32(1 − d_t):
    0 for d_t ≤ 2^-25 ≈ 3e-8, 1.19e-7 for d_t = 1e-7. The sentence judges the integrated error
    Σ_t (a_t − d_t) / Σ_t d_t over the run, the share of the whole decay that is lost or added; a
    few tiny shrinks at the end of a schedule weigh nothing in it. (θ's own rounding of the
    product is unbiased across values and left out.) None within the threshold or without decay."""
    used = [d for d in decays if d > 0]
    if not used:
        return None
    applied = [1.0 - _round(1.0 - d, torch.float32) for d in used]
    err = (sum(applied) - sum(used)) / sum(used)
    if abs(err) <= threshold:
        return None
    lost = sum(a == 0 for a in applied)
    note = (
        f"float32 rounding: float32 weights apply {100 * (1 + err):.1f} % of the decoupled decay "
        f"the run asks for (Σ(applied − intended)/Σ intended = {100 * err:+.1f} %; per-step d_t "
        f"from {max(used):.2g} down to {min(used):.2g}, each applied as 1 − float32(1 − d_t))"
    )
    return note + (f"; no shrink at all on the {lost} steps with d_t ≤ 3e-8" if lost else "")
