"""`python -m runner -m hydra/launcher=packed [hydra.launcher.pack=K] lr=... wd=...`: a sweep's jobs
trained in packs of up to K in this process (runner.sweeps.pack), the rest one after another as
Hydra's basic launcher runs them.

Jobs pack when sweeps.pack.pack_key says they may (same model, batch size, epochs, data and device)
and Hydra runs them alike (same hydra.job.env_set, no hydra.job.chdir). A packed job goes through
Hydra's own `run_job` for what Hydra does to any job: its folder, `.hydra/` files, job logging (its
`run.log`), `hydra.job.env_set` and the callbacks' on_job_start. Then, instead of the task function,
it is enrolled in the pack: the pack trains it (its log lines still go to its own log file), and
only then does it get its JobReturn, holding summary[trainer.objective] as `python -m runner`
returns it, and the callbacks' on_job_end. Jobs that cannot pack (or find no partner) run the task
function through run_job, exactly as the basic launcher does.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    env_override,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
JOB_DIR = {"job_dir_key": "hydra.sweep.dir", "job_subdir_key": "hydra.sweep.subdir"}


class PackedLauncher(Launcher):
    def __init__(self, pack: int = 8) -> None:
        self.pack = pack
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        if not isinstance(self.pack, int) or self.pack < 1:
            _exit(
                f"hydra.launcher.pack={self.pack!r} is invalid: the most jobs trained together, an "
                "integer >= 1 (1 runs the jobs one after another)"
            )
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from runner.sweeps.pack import plan_packs

        setup_globals()
        assert (
            self.config is not None
            and self.hydra_context is not None
            and self.task_function is not None
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = [self._job_config(o, initial_job_idx + n) for n, o in enumerate(job_overrides)]
        packs = plan_packs(
            [self._key(c) for c in configs] if self.pack > 1 else [None] * len(configs), self.pack
        )
        log.info(f"Launching {len(configs)} jobs locally, in packs of up to {self.pack}")
        for p, pack in enumerate(packs):
            for n in pack:
                lst = " ".join(filter_overrides(job_overrides[n]))
                log.info(
                    f"\t#{initial_job_idx + n} : {lst}"
                    + (f"  (pack {p}: {len(pack)} jobs)" if len(pack) > 1 else "")
                )
        returns: list[Any] = [None] * len(configs)
        for p, pack in enumerate(packs):
            if len(pack) == 1:  # as the basic launcher runs it
                returns[pack[0]] = run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=configs[pack[0]],
                    **JOB_DIR,
                )
            else:
                for n, ret in zip(pack, self._run_pack([configs[n] for n in pack])):
                    returns[n] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            left = sum(len(q) for q in packs[p + 1 :])
            if left and any(_interrupted(returns[n]) for n in pack):
                from runner.commands import resume_command

                _exit(
                    f"the sweep was stopped by a signal with {left} jobs not started: "
                    f"{resume_command(self.config.hydra.sweep.dir)} continues it (each job from "
                    "its own folder)",
                    1,
                )
        return returns

    def _job_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        """The job's whole config, composed as Hydra's basic launcher composes it."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config

    def _key(self, config: DictConfig) -> Optional[str]:
        """sweeps.pack.pack_key of the job, with how Hydra runs it; None: it runs alone (a config
        the task function will refuse with its usual message, a job that changes its working folder,
        a resume= run)."""
        from runner.config import UserError, validate
        from runner.sweeps.pack import pack_key

        if config.hydra.job.chdir:
            return None
        before = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)  # the task's keys may interpolate ${hydra:...}
        try:
            key = pack_key(validate(config))
        except UserError:
            return None
        finally:
            HydraConfig.instance().cfg = before
        env = OmegaConf.to_container(config.hydra.job.env_set, resolve=True)
        return None if key is None else key + json.dumps(env, sort_keys=True)

    def _run_pack(self, configs: list[DictConfig]) -> list[JobReturn]:
        """Enroll each job through run_job, train them together, then give each its return value and
        on_job_end."""
        from runner.sweeps.pack import train_pack

        assert self.hydra_context is not None and self.config is not None
        callbacks = self.hydra_context.callbacks
        enrolling = HydraContext(
            config_loader=self.hydra_context.config_loader, callbacks=_JobEndLater(callbacks)
        )
        rets = [
            run_job(hydra_context=enrolling, task_function=_enroll, config=c, **JOB_DIR)
            for c in configs
        ]
        # the pack's own lines: console
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        ready = [
            n for n, r in enumerate(rets) if r.status == JobStatus.COMPLETED and r.return_value
        ]
        # a bug in the enrollment, or a job refused there (its folder another process's)
        for n in [n for n in range(len(rets)) if n not in ready]:
            callbacks.on_job_end(config=configs[n], job_return=rets[n])
        refused = any(r.status == JobStatus.COMPLETED and not r.return_value for r in rets)
        jobs = [rets[n].return_value[0] for n in ready]
        handlers = [rets[n].return_value[1] for n in ready]
        for hs in handlers:
            for h in hs:
                if isinstance(h, logging.FileHandler):
                    # reopen on the next line (configuring the next job's logging closed it)
                    h.mode = "a"
        # the same for all: part of the key
        env = OmegaConf.to_container(configs[0].hydra.job.env_set, resolve=True)
        with env_override(env):  # type: ignore[arg-type]  # a dict of str
            outcomes = train_pack(jobs, around=lambda i: _logging_to(handlers[i])) if jobs else []
        for n, job, hs, outcome in zip(ready, jobs, handlers, outcomes):
            with _logging_to(hs):
                refused |= _conclude(rets[n], job, outcome)
                before = HydraConfig.instance().cfg
                HydraConfig.instance().set_config(configs[n])
                try:
                    callbacks.on_job_end(config=configs[n], job_return=rets[n])
                finally:
                    HydraConfig.instance().cfg = before
            for h in hs:
                h.close()
        # as `python -m runner` ends a sweep at a user error, once the pack's other jobs are saved
        if refused:
            sys.exit(2)
        return rets


def _enroll(cfg: DictConfig) -> tuple | None:
    """What `python -m runner` does for a job before it trains, inside run_job: its folder taken
    (callbacks.job_starts) and its saved config kept for when it starts; returns the job's
    sweeps.pack.Job and the log handlers run_job configured for it (its console and its own log
    file). None for a job refused here (said as `python -m runner` says it)."""
    from runner.config import UserError, validate
    from runner.engine.files import resolved
    from runner.sweeps import callbacks
    from runner.sweeps.pack import Job

    hc = HydraConfig.get()
    run_dir = None
    try:
        run_dir = resolved(hc.runtime.output_dir)
        callbacks.job_starts(run_dir, sweep_job=True)
        saved = callbacks.SavedJob.of(cfg)
        # named once set up: a refused job leaves none to name
        job = Job(
            validate(cfg),
            run_dir,
            callbacks.job_choices(hc),
            int(hc.job.num),
            name=f"#{hc.job.num}",
            on_start=lambda: callbacks.run_starts(run_dir, Path(hc.sweep.dir), saved),
        )
    except (UserError, OSError) as e:
        if run_dir is not None:
            callbacks.refused(run_dir)  # only a folder this process holds is touched
        print(f"runner: error: {e}", file=sys.stderr)
        return None
    return job, list(logging.getLogger().handlers)


def _conclude(ret: JobReturn, job: Any, outcome: Any) -> bool:
    """Fill the job's JobReturn as run_job would have from `python -m runner`: the objective, or the
    exception. Says the job's end as `python -m runner` does; True for a user error (a setting or a
    file the user can fix)."""
    from runner.config import UserError
    from runner.sweeps import callbacks

    if outcome.error is None:
        ret.status, ret.return_value = (
            JobStatus.COMPLETED,
            outcome.summary.get(job.cfg.trainer.objective),
        )
    else:
        ret.status, ret.return_value = JobStatus.FAILED, outcome.error
    refused = isinstance(outcome.error, UserError)
    if refused:
        print(f"runner: error: {outcome.error}", file=sys.stderr)
        callbacks.refused(job.run_dir)  # its folder as it was found
    callbacks.run_ends(job.run_dir, outcome.summary["status"] if outcome.summary else "failed")
    return refused


class _JobEndLater:
    """Hydra's callbacks for the enrollment: on_job_start as usual, on_job_end held back until the
    job has trained."""

    def __init__(self, callbacks: Any) -> None:
        self.callbacks = callbacks

    def on_job_start(self, **kwargs: Any) -> None:
        self.callbacks.on_job_start(**kwargs)

    def on_job_end(self, **kwargs: Any) -> None:
        pass


@contextmanager
def _logging_to(handlers: list) -> Iterator[None]:
    """The root logger writes to one job's handlers (its console and its own log file) for a
    while."""
    root = logging.getLogger()
    saved, root.handlers = root.handlers, handlers
    try:
        yield
    finally:
        root.handlers = saved


def _interrupted(ret: JobReturn) -> bool:
    """Whether the job stopped at a signal (SIGTERM, ^C), as its summary.json says: then no further
    job starts, so a time limit or a ^C ends the sweep with every started job checkpointed, instead
    of starting jobs it would kill."""
    summary = (
        Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) / "summary.json"
        if ret.hydra_cfg
        else None
    )
    try:
        return summary is not None and json.loads(summary.read_text())["status"] == "interrupted"
    except (OSError, ValueError, KeyError):
        return False


def _exit(message: str, status: int = 2) -> None:
    print(f"runner: {'error: ' if status == 2 else ''}{message}", file=sys.stderr)
    sys.exit(status)
