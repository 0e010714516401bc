"""How stale BatchNorm's running statistics are, against the exact statistics recalibration
computes (probes.bn_staleness=true; it needs trainer.bn_recalibrate ≠ 0).

For BatchNorm layer l with channels c, running mean/variance (μ_run, σ²_run) and a reference
(μ_ref, σ²_ref) (the exact mean and unbiased variance of the layer's input over a fixed set of
training images, core.evaluation.recalibrated_bn), with the layer's own ε:
    mu_l     = mean_c |μ_run − μ_ref| / √(σ²_ref + ε)       the mean's offset, in reference stds
    logvar_l = mean_c |log((σ²_run + ε) / (σ²_ref + ε))|     the variance's offset as a log ratio
Records take mean_l and max_l of each over all layers, and mean_l over the layers of each stage.
Three pairs:
    bn_staleness_*   running vs clean reference (the un-augmented images recalibration uses):
                     everything the recalibrated evaluation corrects
    bn_lag_*         running vs augmented reference (the same images through the training
                     augmentation, one fixed draw): lag of the running averages alone, since
                     training batches are augmented too
    bn_mismatch_*    augmented vs clean reference: what augmentation itself moves, with no lag
and val_loss_recal_aug, val_acc_recal_aug: the validation set evaluated with the augmented
reference. Both references are exact for the current weights, so right after one is copied into
the running buffers its figures are 0. Each validation costs one more forward pass over the
reference images and one more evaluation of the validation set.
"""

from __future__ import annotations

import torch
from torch import nn

from runner.core.evaluation import batch_norms, bn_statistics, recalibrated_bn
from runner.probes import Probe, Subject, ValidationPoint

PAIRS = {
    "staleness": ("running", "clean"),
    "lag": ("running", "augmented"),
    "mismatch": ("augmented", "clean"),
}


def layer_offsets(model: nn.Module, stats, reference) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu_l, logvar_l) of every BatchNorm layer as two 1-d device tensors (module docstring)."""
    mus, lvs = [], []
    for m, (mean, var), (mean_ref, var_ref) in zip(batch_norms(model), stats, reference):
        ref_var = var_ref.float() + m.eps
        mus.append(((mean.float() - mean_ref.float()).abs() / ref_var.sqrt()).mean())
        lvs.append(((var.float() + m.eps) / ref_var).log().abs().mean())
    return torch.stack(mus), torch.stack(lvs)


def bn_stages(model: nn.Module) -> list[str]:
    """The stage of every BatchNorm layer, in module order: the first dotted prefix of its name
    in model.STAGES ("other" when none)."""
    stages = getattr(model, "STAGES", ())
    names = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return [next((s for s in stages if n.startswith(s + ".")), "other") for n in names]


def offset_figures(name: str, mu: torch.Tensor, logvar: torch.Tensor, stages: list[str]) -> dict:
    """bn_<name>_{mu,logvar}_{mean,max} over all layers and bn_<name>_{mu,logvar}/<stage>."""
    out = {}
    for what, x in (("mu", mu), ("logvar", logvar)):
        out[f"bn_{name}_{what}_mean"], out[f"bn_{name}_{what}_max"] = x.mean(), x.max()
        for stage in dict.fromkeys(stages):
            idx = [i for i, s in enumerate(stages) if s == stage]
            out[f"bn_{name}_{what}/{stage}"] = x[idx].mean()
    return out


def staleness_figures(stats: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """The pairs of PAIRS from {"running", "clean", "augmented"} statistics (a missing one skips
    its pairs)."""
    stages, out = bn_stages(model), {}
    for name, (a, b) in PAIRS.items():
        if a in stats and b in stats:
            out.update(offset_figures(name, *layer_offsets(model, stats[a], stats[b]), stages))
    return out


class AugmentedReference:
    """The exact BatchNorm statistics of the augmented reference images (one fixed draw through the
    training augmentation, made once) and the validation set evaluated with them: computed at most
    once per validation, for every probe that asks (bn_staleness, shadow_bn)."""

    def __init__(self, subject: Subject):
        self.model, self.autocast = subject.model, subject.autocast
        self.images = subject.augmented_images()  # None when trainer.bn_recalibrate=0
        self.n_images = 0 if self.images is None else len(self.images)
        self.cached: tuple[int, dict] | None = None

    def at(self, point: ValidationPoint) -> dict | None:
        """{"stats": per-layer (mean, var), "loss", "acc"} at this validation (device tensors),
        None without images or BatchNorm."""
        if self.images is None or not batch_norms(self.model):
            return None
        if self.cached is None or self.cached[0] != point.step:
            with recalibrated_bn(self.model, self.images, self.autocast):  # restored on leaving
                loss, acc = point.evaluate_val()
                ref = {"stats": bn_statistics(self.model), "loss": loss, "acc": acc}
            self.cached = (point.step, ref)
        return self.cached[1]


class BNStaleness(Probe):
    name = "bn_staleness"

    def __init__(self, subject: Subject, reference: AugmentedReference):
        self.model, self.reference = subject.model, reference

    def at_validation(self, point: ValidationPoint) -> dict[str, torch.Tensor]:
        if point.recalibrated is None or not batch_norms(self.model):
            return {}
        stats = {"running": point.running, "clean": point.recalibrated}
        out = {}
        if (ref := self.reference.at(point)) is not None:
            stats["augmented"] = ref["stats"]
            out["val_loss_recal_aug"], out["val_acc_recal_aug"] = ref["loss"], ref["acc"]
        return {**staleness_figures(stats, self.model), **out}
