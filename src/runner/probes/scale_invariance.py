"""Which kernels are scale-invariant: the tensors the rotational-equilibrium predictions
(probes.theory) hold for.

A conv or linear kernel W is scale-invariant when the loss does not change as W → c·W (c > 0): its
gradient is then orthogonal to W, and decoupled decay turns it at the equilibrium angle instead of
shrinking it to a norm the loss sets. In training mode that holds when every use of the layer's
output is a BatchNorm: BatchNorm subtracts each channel's batch mean (the conv's bias with it) and
divides by its batch std, so a scaled kernel gives the same normalised output. It holds per output
channel, up to BatchNorm's ε (1e-3 here: the invariance fails once the variance of the kernel's
output falls towards ε).

In the runner's ResNets (core.models.resnet):
    v1  stem conv, each block's conv1 and conv2          invariant (a BatchNorm follows each)
        the projection shortcuts (stages.1, stages.2)    not: added to bn2's output
        head linear                                       not: its output is the logits
    v2  stem conv, each bottleneck's conv1 and conv2     invariant (bn2, bn3 follow)
        each bottleneck's conv3, the projections         not: added into the residual stream, which
                                                         the
                                                          identity shortcuts carry on un-normalised
        head linear                                       not
(v2's stages.2 writers, every conv3 and the projection, are invariant only jointly, all scaled
together, since the stream ends in the head's BatchNorm; the per-tensor argument does not use that.)
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

KERNELS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _LayerTracer(fx.Tracer):
    """Traces a model down to its conv, linear and BatchNorm layers, each one graph node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*KERNELS, _BatchNorm)) or super().is_leaf_module(m, qualname)


def scale_invariant_kernels(model: nn.Module) -> list[str]:
    """Names of the kernels (`<layer>.weight`) whose layer's output goes only into BatchNorm layers,
    at every call of the layer, in the model's traced forward (torch.fx): the scale-invariant ones
    (module docstring)."""
    graph = _LayerTracer().trace(model)
    modules = dict(model.named_modules())
    verdict: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], KERNELS):
            continue
        users = list(node.users)
        normalised = bool(users) and all(
            u.op == "call_module" and isinstance(modules[u.target], _BatchNorm) for u in users
        )
        verdict[node.target] = verdict.get(node.target, True) and normalised
    return [f"{name}.weight" for name, ok in verdict.items() if ok]


def stage_of(name: str, stages: tuple[str, ...]) -> str:
    """The first stage whose dotted prefix starts `name`, else "other"."""
    return next((s for s in stages if name.startswith(s + ".")), "other")


def stage_invariance(model: nn.Module) -> dict[str, dict]:
    """Per stage (the model's STAGES, e.g. stem, stages.0-2, head): the kernels (ndim > 1, what
    decay_on=weights regularizes), the scale-invariant ones, their values C_si and C, and share =
    C_si / C. C_si is the C that the equilibrium norm lr_t·√(C/(2·d_t)) counts."""
    invariant = set(scale_invariant_kernels(model))
    stages = tuple(getattr(model, "STAGES", ()))
    out: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if p.ndim < 2:
            continue
        empty = {"kernels": [], "invariant": [], "values": 0, "invariant_values": 0}
        row = out.setdefault(stage_of(name, stages), empty)
        row["kernels"].append(name)
        row["values"] += p.numel()
        if name in invariant:
            row["invariant"].append(name)
            row["invariant_values"] += p.numel()
    for row in out.values():
        row["share"] = row["invariant_values"] / row["values"]
    return out


def invariant_stages(model: nn.Module, params: list[torch.Tensor]) -> dict[str, list[int]]:
    """{stage: positions in `params` of its scale-invariant kernels}; stages without any are left
    out."""
    invariant = set(scale_invariant_kernels(model))
    stages = tuple(getattr(model, "STAGES", ()))
    position = {id(p): i for i, p in enumerate(params)}
    out: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        if name in invariant and id(p) in position:
            out.setdefault(stage_of(name, stages), []).append(position[id(p)])
    return out


def eps_share(var: torch.Tensor, eps: float) -> torch.Tensor:
    """ε/(σ² + ε) per channel, σ² the variance of a BatchNorm's input (its recalibrated
    running_var): how far the layer is from scale-invariant. Scaling the kernel by c turns the
    normalised output z/√(σ² + ε) into c·z/√(c²σ² + ε); the two agree while this share is small, and
    strong decay, which shrinks the kernels, raises it (ResNet BatchNorms use ε = 1e-3)."""
    return eps / (var + eps)
