"""Which evaluation is a run's headline: the one summary.json reports as best/final_val_acc and final_val_loss.

A run evaluates with BatchNorm's running statistics always, and also with recalibrated statistics when
trainer.bn_recalibrate > 0 (core.evaluation); the recalibrated one is then the headline, since the running
statistics lag fast-moving weights. In metrics.jsonl the running evaluation is `val_loss`/`val_acc` (and
`train_eval_*`), the recalibrated one their `_recal` twins. Every place that picks between the two asks this.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Headline:
    recalibrated: bool

    @classmethod
    def of_records(cls, records: list[dict]) -> Headline:
        """The headline of a run from its records: recalibrated when its validation records carry `val_loss_recal`
        (the trainer leaves the key out when trainer.bn_recalibrate=0)."""
        return cls(any(isinstance(r, dict) and "val_loss" in r and "val_loss_recal" in r for r in records))

    @property
    def name(self) -> str:
        """summary.json's `val_metric`."""
        return "recalibrated" if self.recalibrated else "running"

    @property
    def suffix(self) -> str:
        """What the headline's keys in metrics.jsonl add to the running evaluation's: `val_acc` + suffix."""
        return "_recal" if self.recalibrated else ""

    def key(self, metric: str) -> str:
        """The record key of `metric` ("val_acc", "val_loss", ...) in the headline evaluation."""
        return metric + self.suffix

    def loss_acc(self, record: dict) -> tuple[float, float]:
        """(loss, accuracy) of a validation record in the headline evaluation."""
        return record[self.key("val_loss")], record[self.key("val_acc")]
