"""One run as a whole: set up (engine.build) → the loop (engine.loop) → the summary
(engine.summary). A run folder that holds a checkpoint continues from it, bit for bit."""

from __future__ import annotations

import sys
from pathlib import Path

from runner.commands import shown
from runner.config import RunConfig
from runner.engine import estimate
from runner.engine.build import setup, torch_settings_kept
from runner.engine.interrupts import StopRequests
from runner.engine.loop import loop
from runner.engine.progress import Progress
from runner.engine.summary import completed_summary, ended, finish


@torch_settings_kept()  # trainer.deterministic stays this run's
def train(
    cfg: RunConfig, run_dir: Path, meta: dict | None = None, job_num: int = 0, on_start=None
) -> dict:
    """Train one configuration into `run_dir` (continuing from its checkpoint if it has one) and
    return the summary, also written to summary.json. `job_num` is the job's index in a sweep;
    `on_start()` is called once the run is set up (the CLI then names the folder: a run refused
    during setup leaves none to name)."""
    done = completed_summary(cfg, Path(run_dir))
    if done is not None:  # every file of it stays as it is: its log too, so no log line
        print(f"runner: {shown(run_dir)} {ended(done)}: nothing to train", file=sys.stderr)
        return done
    run = setup(cfg, Path(run_dir), meta, job_num)
    if on_start is not None:
        on_start()
    if run.device.type == "cpu" and run.state.step < run.total:  # hours, for the default run
        run.out.log.info(estimate.line(run))
    bar = sys.stderr.isatty() if cfg.trainer.progress is None else cfg.trainer.progress
    stop = StopRequests()
    try:
        with stop, Progress.shown(run, bar) as progress:
            for _ in loop(run, stop, progress):
                pass
    except KeyboardInterrupt as e:
        run.stats.status = "interrupted"
        run.out.log.warning("interrupted at step %d: %s", run.state.step, e)
    except BaseException:
        run.stats.status = (
            "failed"  # a bug or a fatal error: the summary still says where it stopped
        )
        raise
    finally:
        with StopRequests() as late:  # a signal while the summary is written waits for it
            summary = finish(run)
    stop.pass_on()
    late.pass_on()
    return summary
