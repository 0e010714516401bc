#!/usr/bin/env python
"""On a CUDA machine: check that the captured step (trainer.cuda_graphs=true) trains exactly like the
eager one, then time real `runner.train` runs with graphs off and on. Needs torch, torchvision,
tensorboard and tqdm only (no hydra): it imports runner from ../src, like scripts/bench.py.

    python scripts/gpu_check.py                                   # the equivalence check (seconds)
    python scripts/gpu_check.py --data-root /tmp/cifar10-jpg --epochs 2 --out gpu_check.json

1. Equivalence, in float64 so that no rounding hides a difference: ResNet20v1, Adam and SGD (momentum),
   each with L2 and decoupled decay under a schedule that moves every step, batches of two shapes (the second one
   captured as its own graph, as the last batch of an epoch is). Eager `train_step` against
   `GraphedStep(capture=True)`: losses, gradient norms and every weight must agree to 1e-7 (not
   closer: the fused CUDA optimizers read the graph's lr_t as float32, the eager step's as a double).
2. With --data-root: ResNet56v2, batch 128, bf16, for --epochs epochs through `runner.train.train`,
   as (compile off, graphs off), (compile on, graphs off), (compile on, graphs on). The steady
   images/s of each run's summary (compile, autotuning and capture apart) gives the epoch time.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from runner.config import DataConfig, ModelConfig, RunConfig, TrainerConfig  # noqa: E402
from runner.graphs import GraphedStep, step_tables  # noqa: E402
from runner.models import build_resnet  # noqa: E402
from runner.optim import Optimizer, decoupled_rate  # noqa: E402
from runner.schedules import warm_restarts  # noqa: E402
from runner.train import train, train_step  # noqa: E402

LR, L2, WD, SPE = 3e-3, 1e-3, 0.05, 5
SHAPES = [16] * 4 + [8] + [16] * 4 + [8] + [16] * 4 + [8] + [16] * 4 + [8] + [16] * 4 + [8]  # 8 = the last batch


def equivalence(device, algorithm: str) -> dict:
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    schedule, _ = warm_restarts(T_0=1.0, T_mult=2.0, eta_min=0.05)
    decay = decoupled_rate(WD, "schedule", LR)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(b, 3, 32, 32, generator=gen, dtype=torch.float64).to(device),
                torch.randint(0, 10, (b,), generator=gen).to(device)) for b in SHAPES]

    def make():
        torch.manual_seed(0)
        model = build_resnet(20, 1, 10, bn_momentum=0.1).double().to(device)
        return model, Optimizer(model, algorithm=algorithm, lr=LR, l2=L2, wd=WD, decay=decay, capturable=True)

    m1, o1 = make()
    eager = []
    for k, (x, y) in enumerate(batches):
        loss, _, gn = train_step(m1, o1, x, y, k / SPE, schedule(k / SPE), nullcontext(), want_grad_norm=True)
        eager.append((loss.item(), gn.item()))
    m2, o2 = make()
    lrs, ds = step_tables(schedule, decay, LR, SPE, len(batches))
    g = GraphedStep(m2, o2, nullcontext(), lrs, ds, capture=True)
    graphed = []
    for k, (x, y) in enumerate(batches):
        loss, gn = g(x, y, k)
        graphed.append((loss.item(), gn.item()))
    worst_loss = max(abs(a[0] - b[0]) / abs(a[0]) for a, b in zip(eager, graphed))
    worst_gn = max(abs(a[1] - b[1]) / abs(a[1]) for a, b in zip(eager, graphed))
    worst_w = max(((p - q).abs().max() / p.abs().max().clamp_min(1e-12)).item()
                  for p, q in zip(m1.state_dict().values(), m2.state_dict().values()) if p.is_floating_point())
    out = {"algorithm": algorithm, "steps": len(batches), "graphs": len(g.graphs), "capture_s": g.capture_s, "counter": g.counter.item(),
           "max_rel_loss": worst_loss, "max_rel_grad_norm": worst_gn, "max_rel_weight": worst_w}
    out["ok"] = (out["graphs"] == 2 and out["counter"] == len(batches)
                 and max(worst_loss, worst_gn, worst_w) < 1e-7)
    torch.backends.cudnn.deterministic = False
    return out


def timed_runs(root: str, epochs: int, out_dir: Path) -> list[dict]:
    rows = []
    for compile_, graphs in ((False, False), (True, False), (True, True)):
        cfg = RunConfig(epochs=epochs, batch_size=128, model=ModelConfig(), data=DataConfig(name="image_folder", root=root),
                        trainer=TrainerConfig(device="cuda", compile=compile_, cuda_graphs=graphs, progress=False))
        run_dir = out_dir / f"compile{int(compile_)}_graphs{int(graphs)}"
        run_dir.mkdir(parents=True)
        s = train(cfg, run_dir)
        row = {"compile": compile_, "cuda_graphs": graphs, "status": s["status"], "images_per_s": s["images_per_s"],
               "epoch_s": 50_000 / s["images_per_s"] if s["images_per_s"] else None,
               "first_step_s": s["first_step_s"], "graph_capture_s": s.get("graph_capture_s"),
               "val_s_per_pass": s["val_time_s"] / epochs, "wall_time_s": s["wall_time_s"],
               "final_val_acc": s["final_val_acc"], "device": s["device"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", help="image folder of CIFAR-10 (train/ and test/) for the timed runs")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; this script checks the CUDA graph path on a GPU machine")
    device = torch.device("cuda")
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    result["equivalence"] = eq = [equivalence(device, a) for a in ("adam", "sgd")]
    ok = all(e["ok"] for e in eq)
    for e in eq:
        print(f"gpu_check: {result['device']}, torch {result['torch']}: equivalence {json.dumps(e)}", flush=True)
    if args.data_root:
        with tempfile.TemporaryDirectory() as tmp:
            result["runs"] = timed_runs(args.data_root, args.epochs, Path(tmp))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"gpu_check: wrote {args.out}; equivalence {'OK' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
