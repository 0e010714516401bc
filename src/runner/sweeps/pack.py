"""Packed training: several runs in one process and on one device, their steps interleaved
(hydra/launcher=packed).

A graphed ResNet56v2 step at batch 128 keeps an H100/H200 mostly idle, and the studies are sweeps. A
pack sets up each of its runs with `engine.build.setup` and turns the same `engine.loop.loop`
generator of each, one optimizer step at a time, round robin. Every run keeps everything that makes
it itself: its folder, weights, optimizer state, schedule, data order and augmentation (drawn from
its own seed and epoch), divergence check, checkpoints, records and summary. The pack shares the
process, one StopRequests (a SIGTERM checkpoints every run), and the loaded data set.

On CUDA each run gets its own stream and everything it does (setup, steps, validation, its summary)
is queued there, so the K runs' CUDA graphs replay concurrently, and a host read at a run's logging
point waits for that run's stream only. On a CPU the runs take turns: the same operations in the
same order as a run alone, so a run of a pack ends with the same weights and records as the run
alone, bit for bit (tests/test_pack.py).

The global random number generators are the process's, shared by the pack: training never reads them
(the data order comes from (seed, epoch) generators, the initial weights from the seed set in
setup), so a checkpoint's `rng` entry holds whatever state the process had when that run saved, and
restoring it in a continued pack changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, NamedTuple, Sequence

import torch

from runner.config import ConfigError, RunConfig, UserError
from runner.engine.build import execution_path, pick_device, setup, torch_settings_kept, use_device
from runner.engine.interrupts import StopRequests
from runner.engine.loop import loop
from runner.engine.run import Run
from runner.engine.summary import completed_summary, ended, finish

log = logging.getLogger("runner")

# torch.cuda.Stream(device) takes a stream from a pool of 32 per device and priority, handed out
# round robin: the 33rd asked for is the first again (c10/cuda/CUDAStream.h, "Stream pool note").
# Its one other kind, torch.cuda.ExternalStream, wraps a handle made outside torch, and torch's
# Python API makes none (the private torch._C._cudart.cudaStreamCreate makes a stream that
# synchronizes with the legacy default stream, unlike the pool's non-blocking ones, and torch would
# never destroy it). Two jobs handed one stream would not run side by side, and two CUDA graphs
# captured on one stream share its cuBLAS workspace (torch keys it by stream), which their replays
# on the jobs' own streams would then write at once. So a pack takes no more streams than the pool
# holds (cuda_streams).
POOL_STREAMS = 32


@dataclass
class Job:
    """One run of a pack: what `engine.train.train` takes, and the name its log lines carry."""

    cfg: RunConfig
    run_dir: Path
    meta: dict | None = None
    job_num: int = 0
    name: str = ""
    # called once the job is set up (the launcher then names its folder)
    on_start: Callable[[], None] = lambda: None


class Outcome(NamedTuple):
    """How a job of the pack ended: its summary (None if it could not be set up) and the exception
    that stopped it."""

    summary: dict | None
    error: BaseException | None = None


def pack_key(cfg: RunConfig) -> str | None:
    """Runs with equal keys may share a pack: the same model, batch size, epochs, data and device,
    so their steps take about the same time and their loaders can share one copy of the data set;
    and the same process-wide setting (trainer.deterministic). Everything else (lr, wd, l2,
    optimizer, schedule, seed, ...) may differ. None: never packed (a `resume=` run continues a
    folder of its own choosing, through the usual path)."""
    if cfg.resume:
        return None
    shared = {
        "model": dataclasses.asdict(cfg.model),
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "data": dataclasses.asdict(cfg.data),
        "device": cfg.trainer.device,
        "deterministic": cfg.trainer.deterministic,
    }
    return json.dumps(shared, sort_keys=True)


def plan_packs(keys: Sequence[str | None], size: int) -> list[list[int]]:
    """Job indices grouped into packs of up to `size` jobs with equal keys (pack_key), each pack in
    the order of its first job; a job whose key is None, or that finds no partner, is a pack of one.
    """
    packs: list[list[int]] = []
    filling: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key is None:
            packs.append([i])
            continue
        if key not in filling or len(filling[key]) == size:
            filling[key] = []
            packs.append(filling[key])
        filling[key].append(i)
    return packs


def cuda_streams(jobs: Sequence[Job], device: torch.device) -> int:
    """The streams a pack of `jobs` takes from torch's pool on CUDA `device` (POOL_STREAMS): one
    per job, two more per job on CUDA graphs (its step's and its eval forward's side streams,
    engine.step), and one that torch.cuda.graph may make for itself."""
    return len(jobs) + 1 + sum(2 * _graphed(job.cfg, device) for job in jobs)


def _graphed(cfg: RunConfig, device: torch.device) -> bool:
    try:
        return execution_path(cfg.trainer, device).cuda_graphs
    except ConfigError:  # refused at its setup: counted at the most it could take
        return True


def too_many_streams(jobs: Sequence[Job], device: torch.device) -> ConfigError | None:
    """Why `jobs` cannot share one pack on `device` without torch handing a stream out twice."""
    if device.type != "cuda" or (n := cuda_streams(jobs, device)) <= POOL_STREAMS:
        return None
    most = (POOL_STREAMS - 1) // (3 if any(_graphed(j.cfg, device) for j in jobs) else 1)
    return ConfigError(
        f"a pack of {len(jobs)} jobs on CUDA needs {n} CUDA streams and torch has {POOL_STREAMS} "
        "per device, which it hands out again when asked for more (two jobs' CUDA graphs could "
        f"then race on one stream's cuBLAS workspace): use hydra.launcher.pack={most} or fewer"
    )


def start_rounds(periods: Sequence[int]) -> list[int]:
    """The round in which each of K jobs takes its first step: job i waits i·P/K rounds, P the
    shortest validation period (trainer.val_every, in steps) among them, so that no two jobs
    validate or checkpoint in the same round (all at once, the device would run one job's evaluation
    while the others' streams sit empty)."""
    k, period = len(periods), min(periods, default=0)
    return [i * period // k for i in range(k)]


@torch_settings_kept()  # trainer.deterministic (one value per pack: pack_key) stays the pack's
def train_pack(
    jobs: Sequence[Job],
    around: Callable[[int], ContextManager] | None = None,
    stagger: bool | None = None,
) -> list[Outcome]:
    """Train `jobs` together, each into its own folder (continuing from its checkpoint if it has
    one), and return their outcomes in order. A job that diverges, fails or cannot start stops
    alone; the others go on (a job's user error, e.g. a missing data set, is only returned: the
    caller reports it). `around(i)` is entered around everything job i does (the launcher routes log
    lines to the job's own log file with it; the benchmark times with it). All jobs run on the
    device of the first job's number (pick_device). `stagger` (default: on CUDA) starts the jobs a
    few rounds apart (start_rounds); it changes no job's training."""
    around = around or (lambda i: nullcontext())
    try:
        device = use_device(pick_device(jobs[0].cfg.trainer.device, jobs[0].job_num))
    except ConfigError as e:  # trainer.device=cuda on a machine without one: no job can start
        return [Outcome(None, e) for _ in jobs]
    if (refused := too_many_streams(jobs, device)) is not None:  # before any stream is taken
        return [Outcome(None, refused) for _ in jobs]
    streams = [torch.cuda.Stream(device) if device.type == "cuda" else None for _ in jobs]

    def inside(i: int) -> ExitStack:
        stack = ExitStack()
        stack.enter_context(around(i))
        # job i's kernels queue on its own stream: the K graphs replay side by side
        if streams[i] is not None:
            stack.enter_context(torch.cuda.stream(streams[i]))
        return stack

    outcomes: list[Outcome | None] = [None] * len(jobs)
    runs, turns, data_cache = {}, {}, {}
    stop = StopRequests()
    with stop, _recompile_room(jobs, device):
        for i, job in enumerate(jobs):
            with inside(i):
                run, outcomes[i] = _start(job, jobs[0].job_num, data_cache)
                if run is not None:
                    runs[i], turns[i] = run, loop(run, stop)
        data_cache.clear()  # the loaders hold what they need
        if turns:
            log.info("pack of %d: %s", len(turns), ", ".join(jobs[i].name or str(i) for i in turns))
        stagger = device.type == "cuda" if stagger is None else stagger
        every = [runs[i].val_every for i in turns]
        first = dict(zip(turns, start_rounds(every))) if stagger else {}
        _take_turns(turns, runs, outcomes, inside, first)
    stop.pass_on()
    return outcomes  # type: ignore[return-value]  # every slot is filled above


def _start(job: Job, job_num: int, data_cache: dict) -> tuple[Run | None, Outcome | None]:
    """The job's run, set up; or, when it will not train (completed already, or refused), its
    outcome. A job's user error (a missing data set, a folder of another run) is only returned:
    the caller reports it, as python -m runner does."""
    done = completed_summary(job.cfg, job.run_dir)
    if done is not None:  # as engine.train: every file of it stays as it is
        print(f"runner: [{job.name}] {ended(done)}: nothing to train", file=sys.stderr)
        return None, Outcome(done)
    try:
        run = setup(job.cfg, job.run_dir, job.meta, job_num, job.name, data_cache=data_cache)
    except Exception as e:  # this job only
        if not isinstance(e, UserError):
            log.error("[%s] not started: %s", job.name, e, exc_info=e)
        return None, Outcome(None, e)
    job.on_start()
    return run, None


def _take_turns(turns: dict, runs: dict, outcomes: list, inside, first: dict) -> None:
    """Round after round, one step of each job whose first round (`first`, staggered starts) has
    come, until every job's loop has ended."""
    rounds = 0
    try:
        while turns:
            for i in list(turns):
                if rounds < first.get(i, 0):
                    continue
                with inside(i):
                    _turn(i, turns, runs, outcomes)
            rounds += 1
    except KeyboardInterrupt as e:  # a second signal: every job stops now, no final checkpoint
        for i in [i for i in runs if outcomes[i] is None]:
            with inside(i):
                runs[i].stats.status = "interrupted"
                runs[i].out.log.warning("interrupted at step %d: %s", runs[i].state.step, e)
                outcomes[i] = Outcome(finish(runs[i]))


def _turn(i: int, turns: dict, runs: dict, outcomes: list) -> None:
    """One optimizer step of job i (and its logging or validation, if due); when its loop ends, its
    outcome."""
    try:
        next(turns[i])
        return
    except StopIteration:  # completed, diverged (on_diverge=stop) or stopped by a signal
        error = None
    except Exception as e:  # a bug, or on_diverge=raise: this job fails, the others go on
        runs[i].stats.status, error = "failed", e
        runs[i].out.log.error("failed at step %d: %s", runs[i].state.step, e, exc_info=e)
    del turns[i]
    outcomes[i] = Outcome(finish(runs[i]), error)


def _recompile_room(jobs: Sequence[Job], device: torch.device) -> ContextManager:
    """torch.compile keeps the versions it compiles for one code object (each run's model, in train
    and eval mode) up to a limit of 8 by default, past which it runs the rest eagerly: a pack of
    compiled runs raises it."""
    if not any(
        device.type == "cuda" if j.cfg.trainer.compile is None else j.cfg.trainer.compile
        for j in jobs
    ):
        return nullcontext()
    import torch._dynamo

    # torch < 2.7
    name = (
        "recompile_limit"
        if hasattr(torch._dynamo.config, "recompile_limit")
        else "cache_size_limit"
    )
    return torch._dynamo.config.patch(
        **{name: max(getattr(torch._dynamo.config, name), 4 * len(jobs))}
    )
