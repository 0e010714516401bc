"""The names of a run's two evaluations, and which one is its headline.

A run evaluates with BatchNorm's running statistics always, and also with recalibrated statistics
when trainer.bn_recalibrate ≠ 0 (core.evaluation); the recalibrated one is then the headline, since
the running statistics lag fast-moving weights. Each evaluation has its own name everywhere
(metrics.jsonl, TensorBoard, summary.json, the terminal, the report):
    val_loss_running, val_acc_running     running statistics          (train_eval_*_running alike)
    val_loss_recal,   val_acc_recal       recalibrated statistics     (train_eval_*_recal alike)
    val_loss,         val_acc             the headline: a copy of one of the two, named by
                                          summary.json's `val_metric` ("recalibrated" | "running")
so summary.json's final_val_acc is the last validation record's `val_acc`. Every place that picks
between the two evaluations asks this module.
"""

from __future__ import annotations

from dataclasses import dataclass

EVALUATIONS = ("val", "train_eval")  # the evaluated image sets, each with a loss and an accuracy
RUNNING, RECAL = "_running", "_recal"


def _bare_keys() -> tuple[str, ...]:
    return tuple(f"{s}_{m}" for s in EVALUATIONS for m in ("loss", "acc"))


@dataclass(frozen=True)
class Headline:
    recalibrated: bool

    @classmethod
    def of_records(cls, records: list[dict]) -> Headline:
        """The headline of a run from its records: recalibrated when its validation records carry
        `val_loss_recal` (the trainer leaves the key out when trainer.bn_recalibrate=0)."""
        return cls(
            any(isinstance(r, dict) and "val_loss" in r and "val_loss_recal" in r for r in records)
        )

    @property
    def name(self) -> str:
        """summary.json's `val_metric`: which evaluation `val_acc`, best/final_val_acc and
        final_val_loss are."""
        return "recalibrated" if self.recalibrated else "running"

    @property
    def suffix(self) -> str:
        """What the headline evaluation's own keys add to the bare name: `val_acc` + suffix."""
        return RECAL if self.recalibrated else RUNNING

    def key(self, metric: str) -> str:
        """The own key of `metric` ("val_acc", "val_loss", ...) in the headline evaluation:
        val_acc_recal, ..."""
        return metric + self.suffix

    def record(self, values: dict) -> dict:
        """The evaluations' values under their own names ({"val_acc_running": ..., "val_acc_recal":
        ...}) plus the headline's copies under the bare names, in that order."""
        return {**values, **{k: values[self.key(k)] for k in _bare_keys() if self.key(k) in values}}

    def loss_acc(self, record: dict) -> tuple[float, float]:
        """(loss, accuracy) of a validation record in the headline evaluation."""
        return record[self.key("val_loss")], record[self.key("val_acc")]
