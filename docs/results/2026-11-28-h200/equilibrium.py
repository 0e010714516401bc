"""The H200 AdamW runs' weight norm per stage over its predicted rotational equilibrium
lr_t·√(C/(2·d_t)).

PYTHONPATH=src python docs/results/2026-11-28-h200/equilibrium.py Reads the committed metrics
(docs/results/2026-11-28-h200), whose records predate the equilibrium keys: C is the number of
regularized values of each stage of ResNet56v2 (conv and linear kernels, decay_on=weights).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from runner.core.models import build_resnet
from runner.core.update_rule import split_params
from runner.probes.theory import equilibrium_norm

RESULTS = Path(__file__).resolve().parent  # the raw records beside this file


def stage_sizes() -> dict[str, int]:
    model = build_resnet(56, 2)
    regularized = {id(p) for p in split_params(model, "weights")[0]}
    return {
        k: sum(p.numel() for _, p in v if id(p) in regularized)
        for k, v in model.stage_parameters().items()
    }


def main() -> None:
    sizes = stage_sizes()
    for name in ("adamw_30ep", "adamw20_wd3e-4"):
        with gzip.open(RESULTS / f"{name}.metrics.jsonl.gz", "rt", encoding="utf-8") as f:
            logs = [r for r in map(json.loads, f) if "weight_norm/stem" in r and r.get("decay")]
        for r in logs[:: max(1, len(logs) // 8)]:
            ratios = {
                k: r[f"weight_norm/{k}"] / equilibrium_norm(r["lr"], r["decay"], c)
                for k, c in sizes.items()
            }
            print(
                f"{name} epoch {r['epoch']:5.2f}: "
                + " ".join(f"{k} {v:.2f}" for k, v in ratios.items())
            )


if __name__ == "__main__":
    main()
