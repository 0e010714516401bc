#!/usr/bin/env python
"""Can torch.compile work on this machine? A small compile in a fresh process, timed.

The GPU command (scripts/gpu.py) runs this first: a missing Triton, C compiler or Python headers,
or an Inductor error, fails here in seconds, and the stages after it then train without
torch.compile (trainer.compile=false) instead of paying for a failed compile at their first step
before they fall back (engine.execution). On CUDA it compiles the preflight's model, ResNet8v1 at
batch 64, forward and backward as the default path trains it (channels_last, bf16 autocast on a
card of compute capability 8.0 on), into the compile cache the preflight then uses, which may
find it there; --quick compiles two small linear layers instead.

    python scripts/compile_probe.py --device cuda --out probe.json
    python scripts/compile_probe.py --device cpu --quick --out probe.json

Writes {"compiled", "seconds", "device", "model", "error"} to --out; exit 0 when it compiled, 1
when it did not (the error's last line in "error").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="two small linear layers, not ResNet8v1")
    p.add_argument("--out", required=True, help="where the JSON result goes")
    return p.parse_args(argv)


def compile_once(device: str, quick: bool) -> str:
    """Compile a model's training forward and backward on `device` and run them once; returns
    which model it was."""
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if quick:
        name, batch, shape = "two linear layers", 8, (16,)
        layers = torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        model = torch.nn.Sequential(*layers)
    else:
        from runner.core.models import build_resnet

        name, batch, shape = "resnet8v1, batch 64", 64, (3, 32, 32)
        model = build_resnet(8, 1, 10, bn_momentum=0.1)
    layout = torch.channels_last if cuda and not quick else torch.contiguous_format
    model = model.to(dev, memory_format=layout)
    x = torch.randn(batch, *shape, device=dev).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,), device=dev)
    bf16 = cuda and torch.cuda.get_device_properties(dev).major >= 8
    autocast = nullcontext()
    if bf16:  # as engine.build.device_settings makes it for CUDA graphs
        autocast = torch.autocast("cuda", torch.bfloat16, cache_enabled=False)
    compiled = torch.compile(model, dynamic=False)  # as engine.execution compiles
    with autocast:
        loss = F.cross_entropy(compiled(x), y)
    loss.backward()
    if cuda:
        torch.cuda.synchronize(dev)
    if not torch.isfinite(loss):
        raise RuntimeError(f"the compiled model's loss is {loss.item()}")
    return name


def main(argv=None) -> int:
    args = parse_args(argv)
    tick = time.perf_counter()
    result = {"compiled": False, "device": args.device, "model": None, "error": None}
    try:
        result["model"] = compile_once(args.device, args.quick)
        result["compiled"] = True
    except Exception as e:  # what a run's first step would have died of
        lines = [line for line in str(e).splitlines() if line.strip()]
        result["error"] = f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]
        traceback.print_exc()
    result["seconds"] = round(time.perf_counter() - tick, 1)
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"compile_probe: {json.dumps(result)}", flush=True)
    return 0 if result["compiled"] else 1


if __name__ == "__main__":
    sys.exit(main())
