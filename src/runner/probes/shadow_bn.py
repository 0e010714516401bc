"""Shadow BatchNorm statistics: extra running averages at other momenta, fed by the same training
batches as the real ones and never used in training, so one run gives the lag at every momentum,
with the weights, the batches and the device held fixed by construction (probes.shadow_bn=[m, ...]).

Each BatchNorm channel c keeps M running means and M running variances. After each training batch
every row takes the batch's mean and unbiased variance with its own momentum m, torch's rule
r ← (1 − m)·r + m·b, starting where torch starts (mean 0, var 1). A validation evaluates the same
weights once per row, its statistics copied into the layers' running buffers and put back after:
    val_loss_shadow@m, val_acc_shadow@m    the validation set with the shadow set of momentum m
and, with trainer.bn_recalibrate ≠ 0, the chain's figures against the exact statistics of the
augmented reference images (probes.bn_lag has the formulas), per stage and over all channels, for
the running statistics (no suffix) and every shadow set (@m):
    bn_drift_mu/<stage>                    movement of the exact means per step since the previous
                                           validation, in stds (link b)
    bn_lag_rms<@m>/<stage>, bn_lag_rms<@m>  RMS lag of the EMA's means against the exact ones
    bn_lag_pred_rms<@m>(/<stage>)          the lag the drift predicts (link c)
    bn_noise_rms<@m>(/<stage>)             the batch-noise floor the EMA keeps
    bn_ref_noise_rms(/<stage>)             the reference images' own sampling error
    bn_eps_share(/<stage>)                 mean over channels of ε/(σ²_ref + ε): how far the layer
                                           is from scale-invariant (scale_invariance.eps_share)
    bn_shadow_batches                      the batches the shadow sets have seen (their warm-up)
    val_loss_recal_aug, val_acc_recal_aug  the reference itself evaluated (the zero-lag loss)

The batch's statistics are not recomputed: BatchNorm has just folded them into its running buffers
with its own momentum m₀, so b = (r_new − (1 − m₀)·r_old)/m₀ from the buffers of the previous
step (`batch_from_running`); its float32 rounding error, ≈ 1e-7·|r|/m₀, is far below the batch
noise. The batch noise σ_b² per channel is one more EMA (`update_noise`, bias-corrected). The
per-step work (`after_step`) reads the running buffers after each step, outside the step: eager
device ops (a few small kernels on ≈ 700 channels in ResNet20, 2,000 in ResNet56v2), between two
replays of a CUDA graph, and outside torch.compile's graph, which never sees it; no host read. It
only reads what training wrote, so training is bit for bit the same with it on.
Limits: BatchNorm layers with momentum=None (a cumulative average) are not covered; a training step
with more than one forward pass would fold several batches in at once.
"""

from __future__ import annotations

import torch

from runner.core.evaluation import batch_norms
from runner.probes import Probe, StepPoint, Subject, ValidationPoint
from runner.probes.bn_lag import ema_noise_var, predicted_lag, stage_rms
from runner.probes.bn_staleness import AugmentedReference, bn_stages
from runner.probes.scale_invariance import eps_share

NOISE_MOMENTUM = 0.01  # the batch noise's own EMA: a memory of ≈ 100 steps


def batch_from_running(old: torch.Tensor, new: torch.Tensor, momentum) -> torch.Tensor:
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
    momentum: float = NOISE_MOMENTUM,
) -> torch.Tensor:
    """An EMA of (b_k − b_{k−1})²/2 per channel: the variance σ_b² of one batch's statistic about
    its mean, which sets an EMA's noise floor σ_b²·m/(2 − m) (probes.theory.ema_noise_var).
    Consecutive batches are independent draws; a drift of r per step adds only r²/2."""
    return torch.lerp(noise_var, (batch - prev_batch).pow(2) / 2, momentum)


class ShadowBN(Probe):
    """The shadow sets, their evaluations and the chain's figures (module docstring)."""

    name = "shadow_bn"

    def __init__(self, subject: Subject, momenta: tuple[float, ...], reference: AugmentedReference):
        self.model, self.reference, self.batch_size = subject.model, reference, subject.batch_size
        self.norms, self.momenta = batch_norms(subject.model), momenta
        sizes = [m.num_features for m in self.norms]
        self.sizes = sizes
        if not self.norms:
            return
        dev = self.norms[0].running_mean.device
        self.m0 = torch.cat([torch.full((n,), m.momentum) for n, m in zip(sizes, self.norms)]).to(
            dev
        )
        self.eps = torch.cat([torch.full((n,), m.eps) for n, m in zip(sizes, self.norms)]).to(dev)
        layer_stage = bn_stages(subject.model)
        stage_of = [s for s, n in zip(layer_stage, sizes) for _ in range(n)]
        self.channels = {
            s: torch.tensor([c for c, t in enumerate(stage_of) if t == s], device=dev)
            for s in dict.fromkeys(layer_stage)
        }
        self.channels[""] = torch.arange(len(stage_of), device=dev)  # all channels
        self.prev = self.running()  # the buffers after the last step: b comes out of the next
        mean, var = shadow_stack(momenta, len(stage_of))
        self.shadow = torch.stack([mean, var]).to(dev)  # 2 × M × C
        self.batch_prev = torch.zeros(len(stage_of), device=dev)  # the last batch's means
        self.noise = torch.zeros(len(stage_of), device=dev)  # σ_b² of the batch means, biased
        self.absorbed = 0  # batches the shadows have seen
        self.ref_prev: tuple[int, torch.Tensor] | None = None  # (step, exact means) last time
        self.lag_pred: torch.Tensor | None = None  # (1 + M) × C raw predicted lags

    def running(self) -> torch.Tensor:
        """2 × C: every layer's running mean and variance, concatenated in module order."""
        means = torch.cat([m.running_mean.float() for m in self.norms])
        return torch.stack([means, torch.cat([m.running_var.float() for m in self.norms])])

    @torch.no_grad()
    def after_step(self, point: StepPoint) -> None:
        """The step's batch statistics out of the running buffers, into every shadow row."""
        if not self.norms:
            return
        now = self.running()
        batch = batch_from_running(self.prev, now, self.m0)
        for i in (0, 1):
            self.shadow[i] = update_shadows(self.shadow[i], batch[i], self.momenta)
        if self.absorbed:
            self.noise = update_noise(self.noise, batch[0], self.batch_prev)
        self.batch_prev, self.prev = batch[0], now
        self.absorbed += 1

    @torch.no_grad()
    def at_validation(self, point: ValidationPoint) -> dict[str, torch.Tensor]:
        if not self.norms:
            return {}
        out = self.evaluations(point)
        if (ref := self.reference.at(point)) is not None:
            out["val_loss_recal_aug"], out["val_acc_recal_aug"] = ref["loss"], ref["acc"]
            out.update(self.chain(point, ref["stats"]))
        return out

    def evaluations(self, point: ValidationPoint) -> dict[str, torch.Tensor]:
        """val_loss_shadow@m, val_acc_shadow@m; the buffers are put back as they were."""
        saved = [(m.running_mean.clone(), m.running_var.clone()) for m in self.norms]
        out = {}
        try:
            for j, m in enumerate(self.momenta):
                self.load(self.shadow[0, j].split(self.sizes), self.shadow[1, j].split(self.sizes))
                out[f"val_loss_shadow@{m:g}"], out[f"val_acc_shadow@{m:g}"] = point.evaluate_val()
        finally:
            self.load([mean for mean, _ in saved], [var for _, var in saved])
        return out

    def load(self, means, variances) -> None:
        for layer, mean, var in zip(self.norms, means, variances):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)

    def chain(self, point: ValidationPoint, reference: list) -> dict[str, torch.Tensor]:
        """The figures of links (b) and (c) at this validation (probes.bn_lag); the predicted lag
        starts from the measured one at the first validation, so it has no figure there."""
        mean = torch.cat([m.float() for m, _ in reference])
        scale = (torch.cat([v.float() for _, v in reference]) + self.eps).sqrt()
        running = torch.cat([m.float() for m, _ in point.running])
        lag = torch.cat([running.unsqueeze(0), self.shadow[0]]) - mean  # (1 + M) × C, raw
        momenta = torch.cat([self.m0.unsqueeze(0), self.shadow_momenta()])
        seen = [point.step] + [self.absorbed] * len(self.momenta)
        seen = torch.tensor(seen, device=mean.device).unsqueeze(1)
        batch_var = self.noise / max(1e-12, 1 - (1 - NOISE_MOMENTUM) ** max(self.absorbed - 1, 0))
        floor = ema_noise_var(batch_var, momenta, seen).sqrt()
        figures = {"bn_lag_rms": lag / scale, "bn_noise_rms": floor / scale}
        prev_step, prev_mean = self.ref_prev or (None, mean)
        steps = None if prev_step is None else point.step - prev_step
        if steps is not None and steps <= 0:  # the same step again (a resumed run's last one)
            return {}
        pred = lag
        if steps:
            pred = predicted_lag(self.lag_pred, mean, prev_mean, steps, momenta)
            figures["bn_lag_pred_rms"] = pred / scale
            figures["bn_drift_mu"] = ((mean - prev_mean) / steps / scale).unsqueeze(0)
        ref_var = batch_var * self.batch_size / max(1, self.reference.n_images)
        figures["bn_ref_noise_rms"] = (ref_var.sqrt() / scale).unsqueeze(0)
        out = self.by_set({k: stage_rms(x, self.channels) for k, x in figures.items()})
        share = eps_share(scale.pow(2) - self.eps, self.eps)  # where BN stops being invariant
        out.update({_key("bn_eps_share", "", s): share[i].mean() for s, i in self.channels.items()})
        out["bn_shadow_batches"] = torch.tensor(float(self.absorbed), device=mean.device)
        self.ref_prev, self.lag_pred = (point.step, mean.clone()), pred
        return out

    def shadow_momenta(self) -> torch.Tensor:
        m = torch.tensor(self.momenta, device=self.m0.device).unsqueeze(1)
        return m.expand(-1, len(self.m0))

    def by_set(self, figures: dict) -> dict[str, torch.Tensor]:
        """{name<@m>/<stage>: the set's value} from {name: {stage: values}}, one value per set
        (running first), or one for all of them (drift, the reference's floor: no suffix)."""
        out = {}
        sets = [""] + [f"@{m:g}" for m in self.momenta]
        for name, per_stage in figures.items():
            for stage, values in per_stage.items():
                for j, sfx in enumerate(sets[: len(values)]):
                    out[_key(name, sfx, stage)] = values[j]
        return out

    def state_dict(self) -> dict:
        if not self.norms:
            return {}
        keep = ("prev", "shadow", "batch_prev", "noise", "absorbed", "ref_prev", "lag_pred")
        return {"momenta": list(self.momenta), **{k: getattr(self, k) for k in keep}}

    def load_state_dict(self, state: dict) -> None:
        """A continued run goes on where the saved one stopped; a run that turns the probe on or
        changes its momenta when it continues starts the shadows there (bn_shadow_batches counts
        from that step)."""
        if not self.norms or not state or tuple(state["momenta"]) != tuple(self.momenta):
            return
        dev = self.m0.device
        move = lambda t: t.to(dev) if torch.is_tensor(t) else t
        for k in ("prev", "shadow", "batch_prev", "noise", "lag_pred"):
            setattr(self, k, move(state[k]))
        self.absorbed = state["absorbed"]
        self.ref_prev = (
            None
            if state["ref_prev"] is None
            else (state["ref_prev"][0], move(state["ref_prev"][1]))
        )


def _key(name: str, sfx: str, stage: str) -> str:
    return f"{name}{sfx}/{stage}" if stage else f"{name}{sfx}"
