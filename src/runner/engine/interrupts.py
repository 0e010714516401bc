"""Signals that end a run cleanly: finish the step, write a checkpoint, then stop (a SLURM time
limit, ^C)."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("runner")
SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


class StopRequests:
    """Turns SIGTERM/SIGINT/SIGUSR1/SIGUSR2 into a flag the loop reads after each step; a second
    signal aborts at once. On exit the previous handlers come back (submitit's requeue handler among
    them)."""

    def __init__(self):
        self.signum, self.previous = None, {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(
                f"second {signal.Signals(signum).name}: stopping without a final checkpoint"
            )
        self.signum = signum
        log.warning(
            "%s received: finishing this step, saving a checkpoint, then stopping",
            signal.Signals(signum).name,
        )

    def __enter__(self):
        for name in SIGNALS:
            if hasattr(signal, name):
                self.previous[name] = signal.signal(getattr(signal, name), self._handle)
        return self

    def __exit__(self, *exc):
        for name, handler in self.previous.items():
            signal.signal(getattr(signal, name), handler)
        return False

    def pass_on(self) -> None:
        """Hand the signal to whoever handled it before us (submitit requeues the job), once our
        files are safe."""
        if self.signum is not None and self.signum != signal.SIGINT:
            prev = self.previous.get(signal.Signals(self.signum).name)
            if callable(prev):
                prev(self.signum, None)
