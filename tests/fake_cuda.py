"""torch.cuda's streams, graphs and graph memory pools, faked and recorded on a machine without
CUDA (tests/engine/test_step.py, tests/engine/test_execution.py): what engine.step asks for
(which device, which stream, which pool) is checked here; a captured body runs eagerly on CPU
tensors.

The graph context does with the current stream and the allocator what torch.cuda.graph does
(torch/cuda/graphs.py, ATen's CUDAGraph.cpp): it makes the capture stream current and routes
allocations to the pool on entry; at a clean exit capture_end stops the routing and the stream
context puts the caller's stream back. When capture_end fails (`fail="end"`: CUDA refused to end
the capture) or the body failed (CUDA then invalidates the capture, and capture_end fails too),
torch's exit raises at cudaStreamEndCapture: before endAllocateToPool, and before the stream
context's exit, so the capture stream stays current. `fail="sync"`: a host read (.item()) inside
the capture raises, as CUDA refuses a sync on a capturing stream.
"""

import warnings
from contextlib import contextmanager, nullcontext

import torch

CAPTURE_SYNC = "operation not permitted when stream is capturing"


class Current:
    """What current_stream(device) hands out for the caller's stream."""

    def __init__(self, device=None):
        self.device = device

    def wait_stream(self, other):
        pass


class Graph:
    def replay(self):
        pass


class FakeCuda:
    def __init__(self, monkeypatch, empty: bool = False, fail: str | None = None):
        self.streams, self.current, self.captures, self.devices, self.recorded = [], [], [], [], []
        self.pools, self.routing, self.released = [], set(), []
        self.now = None  # the stream code under test made current; None: the caller's
        self.capturing, self.empty, self.fail = False, empty, fail
        fake, real_item = self, torch.Tensor.item

        class Stream(Current):  # a stream the code under test makes
            def __init__(self, device=None):
                super().__init__(device)
                fake.streams.append(self)

        def item(t):
            if fail == "sync" and fake.capturing:
                raise RuntimeError(f"CUDA error: {CAPTURE_SYNC}")
            return real_item(t)

        self.Stream = Stream
        for name, value in dict(
            Stream=Stream,
            CUDAGraph=Graph,
            graph=self.graph,
            current_stream=self.current_stream,
            set_stream=self.set_stream,
            stream=self.stream,
            device=self.device,
            synchronize=lambda d=None: None,
            current_device=lambda: 0,
            empty_cache=lambda: None,
        ).items():
            monkeypatch.setattr(torch.cuda, name, value)
        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", self.end_allocate)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda i, p: fake.released.append(p))
        monkeypatch.setattr(torch.Tensor, "item", item)
        monkeypatch.setattr(
            torch.Tensor, "record_stream", lambda t, s: fake.recorded.append(s), raising=False
        )

    @contextmanager
    def stream(self, s):
        before, self.now = self.now, s
        try:
            yield
        finally:
            self.now = before

    @contextmanager
    def graph(self, g, pool=None, stream=None, **kw):
        self.captures.append(stream)
        self.pools.append(pool)
        self.routing.add(pool)
        before, self.now, self.capturing = self.now, stream, True
        try:
            yield
        except Exception as e:  # CUDA invalidated the capture: capture_end fails
            raise RuntimeError("CUDA error: operation failed due to a previous error") from e
        finally:
            self.capturing = False
        if self.fail == "end":
            raise RuntimeError("CUDA error: cudaStreamEndCapture failed")
        self.routing.discard(pool)
        self.now = before
        if self.empty:
            warnings.warn(
                "The CUDA Graph is empty. This usually means that the graph was attempted "
                "to be captured on wrong device or stream."
            )

    def current_stream(self, device=None):
        self.current.append(device)
        return self.now if self.now is not None else Current(device)

    def set_stream(self, s):
        self.now = s if isinstance(s, self.Stream) else None

    def device(self, d):
        self.devices.append(d)
        return nullcontext()

    def end_allocate(self, index, pool):
        if pool not in self.routing:
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
        self.routing.discard(pool)
