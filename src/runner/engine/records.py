"""What a run records: `metrics.jsonl` (the contract other tools read) and TensorBoard scalars.

metrics.jsonl holds one JSON object per record, always with `step` (optimizer steps done, int) and
`epoch` (float), plus whichever of these belong to it:
    train_loss   data loss of that step's batch (no L2 term)
    lr           lr_t = lr·η_t used by that step
    decay        d_t, the shrink θ ← θ·(1 − d_t) applied to the decayed weights (0 when none)
    l2_penalty   λ₂/2·‖θ‖² of the L2-regularized weights
    weight_norm  ‖θ‖ of the regularized weights (the ones `decay_on` selects)
    grad_norm    ‖∇ data loss‖ at that step (on logging steps)
    weight_norm/<stage>   ‖θ‖ of the regularized weights of stem, stages.0-2, head
Validation records (a record with `val_loss` is one), see runner.core.evaluation for the two evaluations and
runner.core.headline for their names:
    val_loss_running, val_acc_running   eval mode with BatchNorm's running statistics (Keras' and torch's number)
    val_loss_recal, val_acc_recal       eval mode after BatchNorm statistics are recomputed on training images
                                        (trainer.bn_recalibrate > 0)
    val_loss, val_acc                   the headline: a copy of the recalibrated pair when there is one, else of
                                        the running pair (summary.json's `val_metric` says which)
    train_eval_loss_running, ...        the same on a fixed un-augmented training subset (trainer.train_eval=true),
                                        `_recal` twins and headline copies alike
Files written before the running evaluation had its own name hold it as bare val_loss/val_acc: `read_metrics`
returns those records in today's names (core.headline.named).
Epoch records (one at each epoch end, a record with `epoch_train_s` is one):
    epoch_train_s, epoch_images         seconds spent training in that epoch in this process (the host waits for
                                        the device before reading the clock), and the images trained in them
    train_acc                           Σ correct / Σ images over the epoch's training batches, in train mode on
                                        the augmented batches as the steps saw them (what Keras prints per epoch)
The file is only ever appended to; a continued run skips the records the file already has.

TensorBoard: scalars grouped train/, val/, optim/, weights/, time/, each named as in metrics.jsonl (val/acc is
the headline val_acc, val/acc_running and val/acc_recal the two evaluations, val/best_acc the best val/acc so
far). The run's hyperparameters go into its own event files (HParams plugin) when it starts, so a running or
killed run shows them too: the swept keys first, then the study's (hparams_columns); its metric columns are the
last values of HPARAMS_METRICS, and its status is written when it ends. The keys are the same for every run of a
sweep, so `tensorboard --logdir multirun/...` compares it (not SummaryWriter.add_hparams, which makes a separate
run per call: pytorch issue 32651).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from runner.core.headline import named

if TYPE_CHECKING:
    from runner.core.update_rule import Optimizer
    from runner.engine.state import RunState, StepRecord

TB_TAGS = {
    "train_loss": "train/loss",
    "l2_penalty": "train/l2_penalty",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "val_loss_running": "val/loss_running",
    "val_acc_running": "val/acc_running",
    "train_eval_loss": "train/eval_loss",
    "train_eval_acc": "train/eval_acc",
    "train_eval_loss_running": "train/eval_loss_running",
    "train_eval_acc_running": "train/eval_acc_running",
    "lr": "optim/lr",
    "decay": "optim/decay",
    "grad_norm": "optim/grad_norm",
    "weight_norm": "weights/norm",
    "val_loss_recal": "val/loss_recal",
    "val_acc_recal": "val/acc_recal",
    "train_eval_loss_recal": "train/eval_loss_recal",
    "train_eval_acc_recal": "train/eval_acc_recal",
    "epoch_train_s": "time/epoch_train_s",
    "train_acc": "train/acc",
}
# the HParams tab's metric columns: the last value of scalars the run writes anyway (no single-point charts)
HPARAMS_METRICS = ("val/acc", "val/best_acc", "val/loss", "train/loss")
STUDY_KEYS = ("optimizer", "lr", "wd", "l2", "reg", "schedule", "epochs")  # HParams columns after the swept keys


def hparams_columns(config: dict, choices: dict, swept: list[str]) -> dict:
    """The HParams tab's columns: the keys the sweep varies, then the study's keys; a config group
    (optimizer, schedule, ...) shows the preset it picked. Everything else stays in summary.json."""
    flat, out = flatten(config), {}
    for key in [*swept, *STUDY_KEYS]:
        value = choices.get(key, flat.get(key, flat.get(f"{key}.name")))
        if key not in out and value is not None:
            out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _kind(record: dict) -> str:
    return "val" if "val_loss" in record else "epoch" if "epoch_train_s" in record else "train"


def flatten(d: dict, prefix: str = "") -> dict:
    """{"optimizer": {"name": "adamw"}} → {"optimizer.name": "adamw"}."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Recorder:
    """Appends records to metrics.jsonl and mirrors them as TensorBoard scalars in the run folder."""

    def __init__(self, run_dir: Path, resume_step: int = 0, histograms_every: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # records past the checkpoint were written before the interruption: the continued run skips them
        self.done = {"train": 0, "val": 0, "epoch": 0}
        self.best_acc = None  # val/best_acc: the best headline val_acc so far
        if self.path.exists():
            for r in read_metrics(self.path):
                self.done[_kind(r)] = max(self.done[_kind(r)], r["step"])
                self._best(r)
            self._terminate_last_line()
        self.file = open(self.path, "a", encoding="utf-8")
        self.histograms_every = histograms_every
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the earlier attempt's events past the checkpoint
            self.tb = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step + 1 if resume_step else None)

    def _best(self, record: dict) -> None:
        if isinstance(record.get("val_acc"), (int, float)) and math.isfinite(record["val_acc"]):
            self.best_acc = max(record["val_acc"], self.best_acc if self.best_acc is not None else -1.0)

    def _terminate_last_line(self) -> None:
        with open(self.path, "rb+") as f:  # a line cut by a kill must not glue onto the next record
            f.seek(0, 2)
            if f.tell() and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                f.write(b"\n")

    def write(self, record: dict) -> None:
        if record["step"] <= self.done[_kind(record)]:
            return
        # NaN is not JSON: a non-finite value is stored as null (the summary says the run diverged)
        self.file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                tag = TB_TAGS.get(key) or (
                    f"weights/{key.split('/', 1)[1]}" if key.startswith("weight_norm/") else None
                )
                if tag and value is not None:
                    self.tb.add_scalar(tag, value, record["step"])
            self._best(record)
            if "val_acc" in record and self.best_acc is not None:
                self.tb.add_scalar("val/best_acc", self.best_acc, record["step"])

    def histograms(self, model, step: int) -> None:
        if self.tb is not None and self.histograms_every and step % self.histograms_every == 0:
            for name, p in model.named_parameters():
                self.tb.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)

    def start(self, config: dict, choices: dict | None = None, swept: list[str] | None = None) -> None:
        """The run's hyperparameters (hparams_columns) into its own event file now, so TensorBoard's HParams tab
        lists the run while it trains (and after it is killed); `finish` adds the status."""
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        hp = hparams_columns(config, choices or {}, swept or [])
        experiment, session_start, _ = hparams(hp, {k: 0.0 for k in HPARAMS_METRICS})
        writer = self.tb._get_file_writer()
        writer.add_summary(experiment)
        writer.add_summary(session_start)
        self.tb.flush()

    def finish(self, summary: dict) -> None:
        """Write the run's status (HParams session end) into its own event file, then close."""
        if self.tb is not None:
            self.tb._get_file_writer().add_summary(_session_end(summary["status"]))
            self.tb.close()
        self.close()

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        """Close metrics.jsonl; the TensorBoard writer stays open for `finish`."""
        if not self.file.closed:
            self.file.flush()
            self.file.close()


def _session_end(status: str):
    """The HParams plugin's end-of-session record: success for a completed run, failure for a diverged or failed
    one, unknown for an interrupted one (it may continue)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    code = {"completed": "STATUS_SUCCESS", "interrupted": "STATUS_UNKNOWN"}.get(status, "STATUS_FAILURE")
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(code)), version=PLUGIN_DATA_VERSION)
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=meta)])


def read_metrics(path: Path) -> list[dict]:
    """All complete records of a metrics.jsonl (a half-written or foreign line is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(named(record))
    return out


class Diverged(RuntimeError):
    """The training loss left the finite range or rose `trainer.diverge_factor`× above its start."""


class Records:
    """The steps' records on their way to metrics.jsonl: kept on the device until a logging point, then read in one
    transfer, checked for divergence, written, and summed into the epoch's mean loss."""

    def __init__(
        self,
        recorder: Recorder,
        opt: Optimizer,
        stage_index: dict,
        steps_per_epoch: int,
        diverge_factor: float,
        state: RunState,
    ):
        self.recorder, self.opt, self.stage_index, self.spe = recorder, opt, stage_index, steps_per_epoch
        self.diverge_factor, self.state = diverge_factor, state
        self.pending: list[StepRecord] = []
        self.last_finite: dict | None = None

    def add(self, record: StepRecord) -> None:
        self.pending.append(record)

    def flush(self, model: nn.Module) -> float | None:
        """Write the pending records; raise Diverged on a bad loss. Returns the last loss (None if nothing pended)."""
        if not self.pending:
            return None
        pending, self.pending = self.pending, []
        last = pending[-1]
        extra = {**self.opt.weight_stats(self.stage_index), "grad_norm": last.grad_norm}
        extra = {k: v for k, v in extra.items() if v is not None}
        n = len(pending)
        corrects = [r.correct if r.correct is not None else torch.zeros((), device=r.loss.device) for r in pending]
        values = torch.cat(
            [torch.stack([r.loss for r in pending]).double(), torch.stack(corrects).double()]
            + [torch.stack([v.double() for v in extra.values()])]
        ).tolist()  # the host waits for the device here
        losses, corrects, extra = values[:n], values[n : 2 * n], dict(zip(extra, values[2 * n :]))
        s = self.state
        for r, loss, correct in zip(pending, losses, corrects):
            rec = {"step": r.step, "epoch": r.step / self.spe, "train_loss": loss, "lr": r.lr, "decay": r.decay}
            if r is last:
                rec.update(extra)
            if s.initial_loss is None and math.isfinite(loss):
                s.initial_loss = loss
            self.recorder.write(rec)
            if not math.isfinite(loss) or (s.initial_loss is not None and loss > self.diverge_factor * s.initial_loss):
                raise Diverged(
                    f"train_loss={loss} at step {r.step} (initial {s.initial_loss:.4g}, "
                    f"trainer.diverge_factor={self.diverge_factor:g})"
                )
            self.last_finite = rec
            s.epoch_loss_sum += loss
            s.epoch_steps += 1
            s.epoch_correct, s.epoch_seen = s.epoch_correct + int(correct), s.epoch_seen + r.images
        self.recorder.histograms(model, last.step)
        return losses[-1]
