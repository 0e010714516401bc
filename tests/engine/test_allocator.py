"""engine.allocator: glibc's allocator set once for CPU training, and what was set recorded."""

import platform
import subprocess
import sys

import pytest

CODE = """
import json
from runner.engine import allocator, provenance
before = provenance.environment("cpu")["malloc"]
first, second = allocator.tune_for_cpu(), allocator.tune_for_cpu()
print(json.dumps([before, first, second, provenance.environment("cpu")["malloc"]]))
"""


def fresh_process(code: str) -> str:
    """`code`'s stdout in a new interpreter: mallopt is process-wide, so not in the test's."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_process_records_glibc_defaults_until_tuned_then_what_was_set():
    import json

    before, first, second, after = json.loads(fresh_process(CODE))
    assert before == "unchanged" and first == second == after
    if platform.libc_ver()[0] == "glibc":
        assert first == "glibc: no mmap for large chunks, trim threshold 1024 MiB"
    else:
        assert first == "unchanged (not glibc)"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt and mallinfo2")
def test_after_tuning_a_large_buffer_comes_from_the_heap_not_a_fresh_mapping():
    """glibc's own accounting (mallinfo2): a 64 MiB tensor is a fresh mapping before tuning (the
    mapped bytes grow by 64 MiB while it lives) and comes from the heap after it (they do not)."""
    code = """
import ctypes, torch
from runner.engine import allocator

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
def mapped_while_held():
    before = libc.mallinfo2().hblkhd
    x = torch.empty(16 << 20)  # 64 MiB
    held = libc.mallinfo2().hblkhd - before
    del x
    return held >> 20
print(mapped_while_held())
allocator.tune_for_cpu()
print(mapped_while_held())
"""
    default, tuned = fresh_process(code).split()
    assert int(default) >= 64 and tuned == "0"
