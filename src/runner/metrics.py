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
    val_loss, val_acc     (validation records)
    train_eval_loss, train_eval_acc   the same evaluation on a fixed un-augmented training subset
The file is only ever appended to; a continued run skips the records the file already has.

TensorBoard: scalars grouped train/, val/, optim/, weights/; at the end the run's hyperparameters and
final metrics go into its own event files (HParams plugin) with the same keys for every run, so
`tensorboard --logdir multirun/...` compares a sweep (not SummaryWriter.add_hparams, which makes a
separate run per call: pytorch issue 32651).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

TB_TAGS = {
    "train_loss": "train/loss", "l2_penalty": "train/l2_penalty", "val_loss": "val/loss", "val_acc": "val/acc",
    "train_eval_loss": "train/eval_loss", "train_eval_acc": "train/eval_acc", "lr": "optim/lr", "decay": "optim/decay",
    "grad_norm": "optim/grad_norm", "weight_norm": "weights/norm",
}
FINAL_METRICS = ("best_val_acc", "final_val_acc", "final_val_loss", "final_train_loss", "steps")


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _kind(record: dict) -> str:
    return "val" if "val_loss" in record else "train"


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
        # records past the checkpoint were written before the interruption: the continued run skips them
        self.done = {"train": 0, "val": 0}
        if self.path.exists():
            for r in read_metrics(self.path):
                self.done[_kind(r)] = max(self.done[_kind(r)], r["step"])
            self._terminate_last_line()
        self.file = open(self.path, "a", encoding="utf-8")
        self.histograms_every = histograms_every
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the earlier attempt's events past the checkpoint
            self.tb = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step + 1 if resume_step else None)

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
                tag = TB_TAGS.get(key) or (f"weights/{key.split('/', 1)[1]}" if key.startswith("weight_norm/") else None)
                if tag and value is not None:
                    self.tb.add_scalar(tag, value, record["step"])

    def histograms(self, model, step: int) -> None:
        if self.tb is not None and self.histograms_every and step % self.histograms_every == 0:
            for name, p in model.named_parameters():
                self.tb.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)

    def finish(self, summary: dict) -> None:
        """Write the run's hyperparameters and final metrics into its own event file, then close."""
        if self.tb is not None:
            from torch.utils.tensorboard.summary import hparams

            hp = flatten({**summary.get("hparams", {}), "choices": summary.get("choices", {})})
            hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hp.items()}
            hp["status"] = summary["status"]
            final = {f"hparams/{k}": float(summary[k]) for k in FINAL_METRICS if summary.get(k) is not None}
            writer = self.tb._get_file_writer()
            for s in hparams(hp, {f"hparams/{k}": 0.0 for k in FINAL_METRICS}):
                writer.add_summary(s)
            for tag, value in final.items():
                self.tb.add_scalar(tag, value, summary.get("steps", 0))
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


def read_metrics(path: Path) -> list[dict]:
    """All complete records of a metrics.jsonl (a half-written or foreign line is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
