"""The loop a user compares the runner with: a PyTorch tutorial's CIFAR-10 training loop, in its
own process, on the runner's model and batch size.

torchvision's DataLoader with worker processes and per-image PIL transforms (random crop with 4
pixels of zero padding, horizontal flip, ToTensor, Normalize), `torch.optim.AdamW`, and the usual
zero_grad → forward → backward → step. Nothing from the runner but the model, so the loop, the data
path and the allocator's state are the tutorial's own. The images are synthetic uint8 (a fixed
seed), the same size and type as CIFAR-10's, so no download is needed.

    python scripts/tutorial_loop.py --model resnet20v2 --batch-size 128 --n-train 3072

It prints one JSON line: `images_per_s`, the image-weighted median of the per-step rates after the
first step (the runner's `images_per_s` is the same median over its timing windows), and
`images_per_s_overall`, all images over the whole loop, the first step and the workers' start
included."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the model, nothing else
from runner.core.models import MODELS, build_resnet  # noqa: E402
from runner.engine.timing import Window, steady_rate  # noqa: E402  (the CLI's own rate)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's, as tutorials use


class Images(Dataset):
    """`n` random 32×32 RGB uint8 images and labels, served as PIL images like torchvision's
    CIFAR10."""

    def __init__(self, n: int, seed: int, transform):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g).numpy()
        self.y = torch.randint(0, 10, (n,), generator=g).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def train(args) -> dict:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    loader = DataLoader(
        Images(args.n_train, args.seed, augment),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    depth, version = MODELS[args.model]
    model = build_resnet(depth, version)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)
    model.train()
    steps, windows, start = 0, [], time.perf_counter()
    for _ in range(args.epochs):
        tick = time.perf_counter()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            now = time.perf_counter()
            # the first step allocates and warms kernels: the runner leaves it out too
            windows.append(Window(len(y), now - tick, startup=steps == 0))
            steps, tick = steps + 1, now
    total = time.perf_counter() - start
    return {
        "loop": "tutorial (torchvision DataLoader, PIL transforms, torch.optim.AdamW)",
        "model": args.model,
        "n_params": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "steps": steps,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "images_per_s": steady_rate(windows),
        "images_per_s_overall": steps * args.batch_size / total,
        "final_loss": loss.item(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet20v2", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=3072, help="synthetic training images")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n_train < 2 * args.batch_size:
        p.error(f"--n-train {args.n_train} gives fewer than 2 steps of {args.batch_size}: no rate")
    print(json.dumps(train(args)))


if __name__ == "__main__":
    main()
