"""`python -m runner [overrides]`: compose the Hydra config, validate it once, train.

`python -m runner resume=RUN_DIR [epochs=N ...]` continues a run from its own saved config; the
trainer refuses overrides that would change the training (runner.config.resumable_keys).
`python -m runner resume=SWEEP_DIR` continues a sweep with its own command (runner.sweeps.resume):
completed jobs stay as they are, the others continue or start. Every run says its folder on stderr
when it starts and when it ends, and outputs/latest points at the newest.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import runner.configs
from runner.config import (
    ConfigError,
    UserError,
    refused_changes,
    register_resolvers,
    register_schema,
    resume_hint,
    validate,
)
from runner.engine.files import reason, resolved
from runner.sweeps import callbacks
from runner.sweeps.resume import continue_sweep

CONFIG_DIR = str(Path(runner.configs.__file__).parent)
register_schema()
register_resolvers()
callbacks.register_resolvers()


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The saved config of run folder `cfg.resume`, with this command line's overrides laid over it
    (a null one too). ConfigError for an override that would change the training (config.
    refused_changes), checkpoint or none: the records are its."""
    old = callbacks.load_saved_config(cfg.resume)
    before = OmegaConf.to_container(old, resolve=False)
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key != "resume" and OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            OmegaConf.update(old, key, OmegaConf.select(cfg, key), force_add=True, merge=False)
    refused = refused_changes(before, OmegaConf.to_container(old, resolve=False))
    if refused:
        raise ConfigError(
            f"resume={cfg.resume} would change the training ({refused}): a continued run keeps its "
            f"settings ({resume_hint()}); drop those overrides, or start a new run in a new folder"
        )
    old.resume = str(resolved(cfg.resume))
    return old


_ABSENT = object()


def sweep_position(hc) -> tuple[int, bool]:
    """(job index in the sweep, whether jobs run in parallel: any launcher but Hydra's basic
    one)."""
    from hydra.types import RunMode

    if hc.mode != RunMode.MULTIRUN:
        return 0, False
    return int(hc.job.num), "BasicLauncher" not in str(hc.launcher.get("_target_", ""))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def task(cfg: DictConfig) -> float | None:
    """Train one run and return its objective, summary[trainer.objective], for sweepers such as
    Optuna's; None when the run has no value for it (e.g. it stopped before its first validation:
    Optuna counts a failed trial). The run's folder is known by its resolved path; its lock is
    taken before anything is written into it, and a start refused before it trains leaves it as it
    was found."""
    hc = HydraConfig.get()
    try:
        run_dir = resolved(hc.runtime.output_dir)
        callbacks.job_starts(run_dir, sweep_job=callbacks.sweep_folder(hc) is not None)
    except (UserError, OSError) as e:  # another process's folder, or no folder: untouched
        _refuse(e)
    saved = None if cfg.get("resume") else callbacks.SavedJob.of(cfg)
    meta = callbacks.job_choices(hc)
    started, summary = False, {}
    try:
        if cfg.get("resume"):
            cfg, meta = resumed_config(cfg, list(hc.overrides.task)), {}
        run = validate(cfg)
        run.data.check_root()
        from runner.engine.train import train  # torch loads once the config is known to be good

        job_num, parallel = sweep_position(hc)
        if parallel and run.trainer.progress is None:
            run.trainer.progress = False  # parallel jobs share a terminal: plain log lines, no bars

        def on_start():
            nonlocal started
            callbacks.run_starts(run_dir, callbacks.sweep_folder(hc), saved)
            started = True

        summary = train(run, run_dir, meta=meta, job_num=job_num, on_start=on_start)
        return summary.get(run.trainer.objective)
    except (UserError, OSError) as e:
        if started and not isinstance(e, UserError):
            raise  # an OS error while training: its traceback, the summary says where it stopped
        if not started:  # refused before it trained: the folder stays as it was found
            callbacks.refused(run_dir)
        _refuse(e)
    finally:
        if started:  # the last line, also after an error or an interruption
            callbacks.run_ends(run_dir, summary.get("status", "stopped"))


def _refuse(e: BaseException) -> None:
    """One line for a user error or an OS error (a name too long, a folder where a file should
    be), then exit 2."""
    if isinstance(e, OSError) and not isinstance(e, UserError):
        where = f": {e.filename}" if e.filename else ""
        e = f"{reason(e)}{where} (nothing was trained)"
    print(f"runner: error: {e}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """The CLI: `resume=SWEEP_DIR` becomes the sweep's own command (runner.sweeps.resume), then
    Hydra composes and runs it."""
    try:
        argv = continue_sweep(sys.argv[1:])
    except UserError as e:
        _refuse(e)
    if argv is not None:
        sys.argv[1:] = argv
    task()


if __name__ == "__main__":
    main()
