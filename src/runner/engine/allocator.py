"""glibc's allocator set for training on a CPU.

A CPU step allocates and frees the same large activations and gradients every step. The 64-channel
32×32 activations of a batch of 128 are 32 MiB, just above the largest size glibc ever serves from
its heap (its mmap threshold tops out at 32 MiB), so by default each of them is a fresh mmap whose
pages fault in one by one and are unmapped at the end of the step; glibc also trims the heap's
top back to the system whenever it frees more than its trim threshold. A plain training script
pays the same cost or not, by luck of allocation order: measured here, the runner's step took
~170,000 minor page faults against a plain loop's ~44,000 (docs/speed.md has the figures and the
command). Two settings remove it: no mmap for large chunks (they come from the heap and are reused
the next step) and a trim threshold past a step's working set (the heap keeps what it regrows
every step). The price is resident memory that stays at the step's peak.

Only glibc has `mallopt` with these meanings; elsewhere (macOS, musl) nothing changes and the run
records that."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB freed at the heap's top: more than a step's peak

_done: str | None = None


def tune_for_cpu() -> str:
    """Set glibc's allocator once per process as the module says; returns what holds, as the run
    records it (`env.malloc` in summary.json)."""
    global _done
    if _done is None:
        _done = _tune()
    return _done


def _tune() -> str:
    if platform.libc_ver()[0] != "glibc":
        return "unchanged (not glibc)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:  # mallopt returns 1 on success
        return "unchanged (glibc refused mallopt)"
    return f"glibc: no mmap for large chunks, trim threshold {TRIM_THRESHOLD >> 20} MiB"


def described() -> str:
    """What holds in this process: what tune_for_cpu set, or glibc's own defaults."""
    return _done or "unchanged"
