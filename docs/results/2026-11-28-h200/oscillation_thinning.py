"""The oscillation figures of the committed H200 AdamW runs with every 1st to 6th validation kept,
at every offset.

PYTHONPATH=src python docs/results/2026-11-28-h200/oscillation_thinning.py [metrics.jsonl.gz ...]
Frequency-dependent figures (tv_per_epoch, n_rises) fall as validations are thinned; dispersion
moves less, within the spread and bias that docs/reports.md states.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from runner.analysis.oscillation import oscillation_block

RESULTS = Path(__file__).resolve().parent  # the raw records beside this file
DEFAULT = [RESULTS / "adamw_30ep.metrics.jsonl.gz", RESULTS / "adamw20_wd3e-4.metrics.jsonl.gz"]
KEYS = (
    "val_every_steps",
    "dispersion",
    "dispersion_train_eval",
    "tv_per_epoch",
    "n_rises",
    "change_corr_train_eval",
    "change_corr_train",
    "dispersion_points",
    "dispersion_bias",
    "acc_dispersion",
    "acc_sampling_error",
)


def main(paths: list[Path]) -> None:
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        vals = sorted(
            {r["step"]: r for r in records if "val_loss" in r}.values(), key=lambda r: r["step"]
        )
        others = [r for r in records if "val_loss" not in r]
        for k in range(1, 7):
            for offset in range(k):
                b = oscillation_block(
                    others + vals[offset::k], None, n_val=10000
                )  # the H200 runs' 10,000 images
                figures = " ".join(f"{key} {b[key]:.3g}" for key in KEYS if b[key] is not None)
                print(f"{path.name.split('.')[0]} every {k} (offset {offset}): {figures}")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]] or DEFAULT)
