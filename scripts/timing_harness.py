"""The one timing helper of the benchmarks: a clock that waits for the device, things timed in
interleaved windows, a turn-counting window for packs, and results files rewritten atomically after
every section.

Every rate is images / seconds over a window whose ends wait for the device (CUDA synchronised on
the device timed), the median over windows after warm-up; interleaving (A B A B ...) makes a load
change on a shared machine hit every entry alike.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

MIN_WINDOWS = 3


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A call that waits for everything queued on `device` (nothing to wait for off CUDA)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class Clock:
    """perf_counter() read after the device has finished what was queued."""

    def __init__(self, device: torch.device):
        self.sync = synchronizer(device)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


class Timed:
    """One thing measured in windows: `step()` does one batch and returns its images;
    `before_window(n)` may run untimed steps first, `after_window()` tidies up after a window."""

    def step(self) -> int:
        raise NotImplementedError

    def before_window(self, n: int) -> None:
        pass

    def after_window(self) -> None:
        pass


def measure(
    timed: dict[str, Timed],
    clock: Clock,
    warmup: int,
    windows: int,
    window_steps: int,
    budget_s: float | None = None,
) -> dict:
    """Warm each entry up (its first step timed apart), then time `windows` rounds of one window of
    `window_steps` steps per entry, interleaved. Returns per name: images/s per window, their
    median, the first step's and the warm-up's seconds. With `budget_s`, stops after the round that
    passes it (at least MIN_WINDOWS rounds)."""
    out = {}
    for name, t in timed.items():
        t0 = clock()
        t.step()
        t1 = clock()
        for _ in range(warmup - 1):
            t.step()
        out[name] = {"first_step_s": t1 - t0, "warmup_s": clock() - t0, "windows": []}
        t.after_window()
    start = time.perf_counter()
    for k in range(windows):
        for name, t in timed.items():
            t.before_window(window_steps)
            t0 = clock()
            n = sum(t.step() for _ in range(window_steps))
            out[name]["windows"].append(n / (clock() - t0))
            t.after_window()
        if budget_s is not None and k + 1 >= MIN_WINDOWS and time.perf_counter() - start > budget_s:
            break
    for r in out.values():
        r["images_per_s"] = statistics.median(r["windows"])
    return out


class TurnWindow:
    """A sweeps.pack.train_pack `around`: reads the clock (device synchronised) as turn `start` and
    turn `end` begin, so that a pack is timed over the same steps of every job."""

    def __init__(self, start: int, end: int, clock: Clock):
        self.turn, self.start, self.end, self.clock = 0, start, end, clock
        self.t0 = self.t1 = None

    @contextmanager
    def __call__(self, i: int):
        self.turn += 1
        if self.turn in (self.start, self.end):
            now = self.clock()
            self.t0, self.t1 = (now, None) if self.turn == self.start else (self.t0, now)
        yield

    @property
    def seconds(self) -> float:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError("the runs ended before the timed window closed: raise their steps")
        return self.t1 - self.t0


def save_json(results: dict, path: Path) -> None:
    """Written whole and then renamed: a run cut short keeps the last complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
