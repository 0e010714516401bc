"""Training time, split honestly into start-up, steady training and stalls.

The loop reads the clock only where it already waits for the device (logging points, validations,
epoch ends, and right after a start-up step), so timing adds no host sync to the step. Each interval
between two such reads is a window: (images trained, seconds, whether a start-up step ran in it).
Start-up steps are those that compile, autotune, warm up or record a CUDA graph: the first step, and
a graph's warm-up and capture steps.

    images_per_s          the steady rate: the median of the other windows' rates, weighted by their
                          images
    startup_s             Σ over start-up windows of max(0, seconds − images / images_per_s)
    stall_s               max(0, train_time_s − startup_s − images / images_per_s): whatever else
                          the steady rate does not explain (a data-set reload, a slow disk, another
                          process)
    steady_s              train_time_s − startup_s − stall_s = min(images / images_per_s,
                          train_time_s − startup_s): the time at the steady rate; less than images /
                          images_per_s only when the windows ran faster on the whole than their
                          median (a loaded machine whose speed varies)
    images_per_s_overall  all images / train_time_s, start-up and stalls included
so startup_s + steady_s + stall_s = train_time_s by construction, each part ≥ 0, on any machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Window:
    images: int
    seconds: float
    startup: bool


def steady_rate(windows: list[Window]) -> float | None:
    """The image-weighted median rate of the windows without start-up steps (None when there are
    none)."""
    steady = sorted(
        (
            (w.images / w.seconds, w.images)
            for w in windows
            if not w.startup and w.seconds > 0 and w.images
        )
    )
    if not steady:
        return None
    half, seen = sum(n for _, n in steady) / 2, 0
    for rate, n in steady:
        seen += n
        if seen >= half:
            return rate
    return steady[-1][0]


def split_time(windows: list[Window]) -> dict:
    """The figures of the module docstring from a run's windows."""
    images = sum(w.images for w in windows)
    total = sum(w.seconds for w in windows)
    rate = steady_rate(windows)
    out = {
        "train_time_s": total,
        "images_per_s": rate,
        "images_per_s_overall": images / total if total > 0 else None,
        "startup_s": None,
        "steady_s": None,
        "stall_s": None,
    }
    if rate:
        startup = sum(max(0.0, w.seconds - w.images / rate) for w in windows if w.startup)
        steady = min(images / rate, total - startup)
        out.update(startup_s=startup, steady_s=steady, stall_s=total - startup - steady)
    return out


@dataclass
class LoopClock:
    """Collects the loop's windows; `lap` closes one at a point where the host has just waited for
    the device."""

    windows: list[Window] = field(default_factory=list)
    images: int = 0
    startup: bool = False
    # the clock (a test's fake one: a slow or stalling host)
    now: Callable[[], float] = time.perf_counter
    since: float | None = None

    def __post_init__(self) -> None:
        self.since = self.now() if self.since is None else self.since

    def restart(self) -> None:
        """Start a window now (after a validation or a checkpoint, which are not training time)."""
        self.images, self.startup, self.since = 0, False, self.now()

    def add(self, images: int, startup: bool = False) -> None:
        self.images += images
        self.startup |= startup

    def lap(self) -> Window | None:
        """Close the current window (None if it trained nothing) and start the next."""
        now = self.now()
        w = Window(self.images, now - self.since, self.startup) if self.images else None
        if w is not None:
            self.windows.append(w)
        self.images, self.startup, self.since = 0, False, now
        return w
