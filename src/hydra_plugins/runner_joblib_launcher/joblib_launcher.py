"""`python -m runner -m hydra/launcher=local_parallel ...`: Hydra's joblib launcher, with its
workers under the sweep's supervision.

Hydra's joblib launcher runs the jobs in loky worker processes, which a signal to the sweep process
does not reach (a ^C reaches them only because a terminal signals its whole foreground process
group) and which outlive it: after a SIGTERM to the sweep alone they trained on, unsupervised and
without a checkpoint on the signal, and idle ones stayed for minutes. Here:

- each worker moves into its own process group when its first job starts, so that a signal reaches
  its jobs only through the sweep process, once;
- the sweep process forwards SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 as a SIGTERM to every worker that
  has taken up a job (an idle one has no handler yet, and would die of it): each running job
  finishes its step, checkpoints and stops (a second signal: stops at once, as a run alone does); a
  job that a worker takes up after the signal does not start (its new folder goes); the sweep
  waits for its workers, then ends with exit status 1 and the command that continues it;
- a worker whose sweep process is gone (killed with SIGKILL) stops its job the same way and exits;
- when the launch ends, however it ends, the workers are shut down: none outlives the sweep.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

log = logging.getLogger(__name__)
SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
STOP = "stop"  # in the board: the sweep is stopping
WATCH_S = 1.0  # how often a worker checks that its sweep process is still there


class SupervisedJoblibLauncher(JoblibLauncher):
    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # where workers say they are ready for a signal, and the sweep that it is stopping
        self.board = Path(tempfile.mkdtemp(prefix="runner-sweep-"))
        atexit.register(shutil.rmtree, self.board, ignore_errors=True)
        supervised = Supervised(task_function, os.getpid(), str(self.board))
        super().setup(hydra_context=hydra_context, task_function=supervised, config=config)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        forwarding = Forwarding(self.board)
        try:
            with forwarding:
                returns = super().launch(job_overrides, initial_job_idx)
        finally:
            shut_down_workers()
        if forwarding.signum is not None:
            from runner.commands import resume_command

            assert self.config is not None
            print(
                f"runner: the sweep was stopped by {signal.Signals(forwarding.signum).name}: its "
                "running jobs checkpointed, the rest did not start; "
                f"{resume_command(self.config.hydra.sweep.dir)} continues it",
                file=sys.stderr,
            )
            sys.exit(1)
        return returns


def worker_pids(board: Path) -> list[int]:
    """The pids of this process's joblib (loky) workers that have taken up a job (their handler is
    in place: `board` holds a file named by the pid)."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    pids = list(getattr(executor, "_processes", None) or {}) if executor is not None else []
    return [pid for pid in pids if (board / str(pid)).exists()]


def shut_down_workers() -> None:
    """Stop this process's idle workers now (loky keeps them for reuse for minutes otherwise)."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True)


class Forwarding:
    """While the launch runs: a signal to the sweep process goes to every worker as a SIGTERM (each
    signal once more: a second one stops the jobs at once); the launch itself goes on, collecting
    what the workers return."""

    def __init__(self, board: Path) -> None:
        self.board = board
        self.signum: int | None = None
        self.previous: dict[str, Any] = {}

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        name = signal.Signals(signum).name
        (self.board / STOP).touch()  # a job taken up from now on does not start
        pids = worker_pids(self.board)
        log.warning(
            "%s received: %s %d workers; waiting for them",
            name,
            "checkpointing and stopping the jobs of" if first else "stopping at once the jobs of",
            len(pids),
        )
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:  # it ended meanwhile
                pass

    def __enter__(self) -> Forwarding:
        for name in SIGNALS:
            if hasattr(signal, name):
                self.previous[name] = signal.signal(getattr(signal, name), self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for name, handler in self.previous.items():
            signal.signal(getattr(signal, name), handler)
        return False


class Supervised:
    """The task function as a worker runs it (pickled to the workers): the first call puts the
    worker into its own process group and starts its watch on the sweep process; a job that
    starts after a stop reached this worker does not train."""

    def __init__(self, task_function: TaskFunction, sweep_pid: int, board: str) -> None:
        self.task_function, self.sweep_pid, self.board = task_function, sweep_pid, board

    def __call__(self, cfg: DictConfig) -> Any:
        if os.getpid() == self.sweep_pid:  # run in the sweep process itself (n_jobs=1 may)
            return self.task_function(cfg)
        _WORKER.start(self.sweep_pid, Path(self.board))
        if _WORKER.stopped or (Path(self.board) / STOP).exists():
            return _skipped()
        _WORKER.running = True
        try:
            return self.task_function(cfg)
        finally:
            _WORKER.running = False
            if _WORKER.orphaned():  # the sweep is gone: nobody takes the result; the job is saved
                os._exit(1)


class _Worker:
    """This worker process's state: whether a stop reached it, whether a job is running."""

    def __init__(self) -> None:
        self.started, self.stopped, self.running, self.sweep_pid = False, False, False, 0

    def start(self, sweep_pid: int, board: Path) -> None:
        if self.started:
            return
        self.started, self.sweep_pid = True, sweep_pid
        try:
            os.setpgrp()  # a terminal's ^C reaches the sweep process alone, which forwards it once
        except OSError:
            pass
        # the runner's StopRequests hands a SIGTERM on to this handler once the job is saved
        signal.signal(signal.SIGTERM, self._note)
        (board / str(os.getpid())).touch()  # ready: the sweep may now forward its signals here
        if os.getppid() == sweep_pid:
            threading.Thread(target=self._watch, daemon=True, name="sweep-watch").start()

    def _note(self, signum, frame) -> None:
        self.stopped = True

    def orphaned(self) -> bool:
        return self.sweep_pid != 0 and os.getppid() != self.sweep_pid

    def _watch(self) -> None:
        while not self.orphaned():
            time.sleep(WATCH_S)
        self.stopped = True
        if not self.running:
            os._exit(1)
        os.kill(os.getpid(), signal.SIGTERM)  # the job checkpoints and stops; then the worker exits


_WORKER = _Worker()


def _skipped() -> None:
    """A job taken up after the stop: its folder (Hydra made it just now) goes, and it reports
    nothing; the continued sweep trains it."""
    from hydra.core.hydra_config import HydraConfig

    from runner.engine.files import resolved
    from runner.sweeps import callbacks

    run_dir = resolved(HydraConfig.get().runtime.output_dir)
    try:
        callbacks.job_starts(run_dir, sweep_job=True)
    except Exception:  # another process's folder: not this job's to clean
        return None
    callbacks.refused(run_dir)
    print(f"runner: {callbacks.shown(run_dir)} not started: the sweep is stopping", file=sys.stderr)
    return None
