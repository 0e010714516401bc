"""The L2 term under Adam: how large λ₂·θ is against the data gradient and inside Adam's update.

Adam divides the L2 term by √v̂ like the rest of the gradient (core.update_rule), so where λ₂·θ
dominates, Adam + L2 turns into a sign step on θ instead of a decay. At each log point, per stage
(Adam + L2 only; θ and v̂ as they stand after the log point's step, g that step's data gradient
before the L2 term joins it):
    l2_grad_ratio/<stage>      ‖λ₂θ‖ / ‖g‖
    l2_update_ratio/<stage>    mean over the stage's values of |λ₂θ|/(√v̂ + ε): the L2 term's part
                               of the update m̂/(√v̂ + ε), in units of lr_t
    l2_dominant_share/<stage>  the share of its values with |λ₂θ| above their tensor's RMS data
                               gradient √(‖g‖²/n): where L2 outweighs the data
probes.l2_figures has the formulas, the three test points and the limits.
"""

from __future__ import annotations

import torch

from runner.probes import LogPoint, Probe, Subject
from runner.probes.l2_figures import l2_dominant_counts, l2_update_sums


class L2Terms(Probe):
    name = "l2_terms"

    def __init__(self, subject: Subject):
        self.opt, self.stages, self.l2 = subject.opt, subject.stages, subject.plan.l2
        self.active = self.l2 > 0 and isinstance(self.opt.inner, torch.optim.Adam)
        params = self.opt.regularized
        self.sizes = {
            s: sum(params[i].numel() for i in idx.tolist()) for s, idx in self.stages.items()
        }

    @torch.no_grad()
    def at_log(self, point: LogPoint) -> dict[str, torch.Tensor]:
        params = self.opt.regularized
        state = self.opt.inner.state.get(params[0]) if params else None
        if not self.active or not state or point.grad_norms is None:
            return {}
        group = self.opt.inner.param_groups[0]
        moments = [self.opt.inner.state[p]["exp_avg_sq"] for p in params]
        ratio = l2_update_sums(
            params, moments, state["step"], group["betas"][1], group["eps"], self.l2
        )
        g_sq = point.grad_norms[: len(params)].pow(2)
        dominant = l2_dominant_counts(params, g_sq, self.l2)
        l2_sq = point.weight_norms.pow(2) * self.l2**2
        out = {}
        for s, idx in self.stages.items():
            out[f"l2_grad_ratio/{s}"] = (l2_sq[idx].sum() / g_sq[idx].sum()).sqrt()
            out[f"l2_update_ratio/{s}"] = ratio[idx].sum() / self.sizes[s]
            out[f"l2_dominant_share/{s}"] = dominant[idx].sum() / self.sizes[s]
        return out
