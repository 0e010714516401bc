"""Hydra's side of the run folders: checked and locked before anything is written into them, named
for people, linked as `latest`, left as they were found when a run is refused, and reported at the
end of a sweep.

configs/config.yaml lists the callbacks under hydra.callbacks and names sweep jobs with
`${job_dirname:...}`. Hydra itself writes no `.hydra/` (hydra.output_subdir is null): a run writes
its saved config only once it holds its folder's lock and starts training (run_starts), so a start
that is refused, or finds its run already completed, changes no byte of a folder that exists. Every
folder is known by its resolved path (engine.files.resolved). Folders are shown relative to the
current directory when they lie below it. Nothing here imports torch.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner import saved_config as saved_configs
from runner.commands import resume_command, shown
from runner.config import ConfigError, non_training_keys
from runner.engine import files, lock
from runner.engine.files import resolved

# outputs/DATE/TIME_id and multirun/DATE/TIME_id (configs/config.yaml)
DATE_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_NAME_BYTES = (
    200  # file systems allow 255 bytes per name; leave room for editors' and tools' suffixes
)


SWEPT_ENV = (
    "RUNNER_SWEPT_KEYS"  # the keys a sweep varies, set at its start: job processes inherit it
)


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: those its command line gives as a sweep (a,b / range / interval /
    choice) and those of hydra.sweeper.params (an experiment preset's grid, Optuna's search space),
    hydra's own left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [
        *OmegaConf.select(config, "hydra.overrides.task", default=[]),
        *(f"{k}={v}" for k, v in params.items()),
    ]
    keys = [
        o.key_or_group
        for o in OverridesParser.create().parse_overrides(lines)
        if o.is_sweep_override()
    ]
    return sorted({k for k in keys if not k.startswith("hydra")})


def job_dirname(num: int, task: list | None = None) -> str:
    """A sweep job's folder name: its job number, then the values of the keys the sweep varies
    (SWEPT_ENV), e.g. `3_optimizer=adamw,reg=0.0005`; without that list (a sweep started
    elsewhere) the keys its command line sets, less those that do not change the training
    (config.non_training_keys); just `3` when that is nothing. The number comes first so that it
    survives the cut to MAX_NAME_BYTES and keeps apart jobs whose names read the same (a value
    given twice, an Optuna trial that draws a point again); folders then list in launch order."""
    swept = os.environ.get(SWEPT_ENV)
    keep = set(swept.split(",")) - {""} if swept is not None else None
    skip = set(non_training_keys())
    pairs = sorted(str(o).lstrip("+~").split("=", 1) for o in task or [] if "=" in str(o))
    shown = [(k, v) for k, v in pairs if (k in keep if keep is not None else k not in skip)]
    values = ",".join(f"{k}={v}" for k, v in shown if not k.startswith("hydra"))
    name = f"{num}_{values.replace('/', '%2F')}" if values else str(num)  # a "/" would nest
    return name.encode()[:MAX_NAME_BYTES].decode(errors="ignore")


def name_part(name) -> str:
    """What name=NAME adds to a run's or sweep's folder name: `_NAME` (anything a folder name
    cannot hold made '-': validate refuses such a name, and the refused run's folder goes), or
    nothing. Nothing in a sweep that varies `name` itself: each job resolves the sweep's folder
    with its own config, and all must land in one (the job folders say name=...)."""
    swept = os.environ.get(SWEPT_ENV, "").split(",")
    if name is None or name == "" or "name" in swept:
        return ""
    return "_" + re.sub(r"[^A-Za-z0-9._-]", "-", str(name))[:64]


def objective_direction(objective: str) -> str:
    """Which way a sweeper should push summary[objective]: losses down, accuracies up."""
    return "minimize" if "loss" in objective else "maximize"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)
        OmegaConf.register_new_resolver("name_part", name_part)
        OmegaConf.register_new_resolver("objective_direction", objective_direction)


def load_saved_config(resume: str) -> DictConfig:
    """The saved config of the run folder `resume`, read within runner.saved_config's limits (its
    interpolations unresolved); ConfigError when there is none or it cannot be read."""
    saved = saved_config(resume)
    try:
        plain = saved_configs.load(saved)
    except saved_configs.SavedConfigError as e:  # the user's file, not a bug
        raise ConfigError(
            f"resume={resume!r}: its saved config {saved} cannot be read ({e}); restore it "
            "from a copy (the checkpoints also hold the config), or start a new run"
        ) from None
    return OmegaConf.create(plain)


def saved_config(resume: str) -> Path:
    """The saved config of the run folder `resume` (its .hydra/config.yaml); ConfigError when there
    is none."""
    try:
        saved = resolved(resume) / ".hydra" / "config.yaml"
    except files.FolderError as e:
        raise ConfigError(f"resume={resume!r}: {e}") from None
    if files.kind(saved) != "file":
        raise ConfigError(
            f"resume={resume!r}: no run there (expected {saved}); give the folder of a run, "
            "e.g. resume=outputs/2026-01-31/12-00-00_abc123, or of a sweep (its multirun.yaml)"
        )
    return saved


def _latest_link(folder: Path) -> Path | None:
    """Where the `latest` link for `folder` goes: next to its date folder, or nowhere for a folder
    placed elsewhere."""
    folder = resolved(folder)
    return folder.parent.parent / "latest" if DATE_FOLDER.fullmatch(folder.parent.name) else None


# link → where it pointed before this process moved it
_previous_latest: dict[Path, str | None] = {}


def point_latest(folder: Path) -> None:
    """Make ROOT/latest point at `folder` (ROOT/DATE/NAME), replacing the old link in one rename so
    that readers see either the old or the new one. Never fails the run: a file system without links
    only costs the link."""
    link = _latest_link(folder)
    if link is None:
        return
    folder = resolved(folder)
    tmp = link.with_name(f".latest.{os.getpid()}")
    try:
        _previous_latest.setdefault(link, os.readlink(link) if link.is_symlink() else None)
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(folder.parent.name, folder.name))  # relative: the tree can move
        os.replace(tmp, link)
    except OSError as e:
        if tmp.is_symlink():
            tmp.unlink()
        print(
            f"runner: note: could not point {shown(link)} at this folder ({e.strerror or e})",
            file=sys.stderr,
        )


def forget_latest(folder: Path) -> None:
    """If this process pointed ROOT/latest at `folder` (a refused run), point it back where it
    pointed before, or remove it; a link this process did not move stays as it is."""
    link = _latest_link(folder)
    try:
        if (
            link in _previous_latest
            and link.is_symlink()
            and os.readlink(link) == str(Path(*resolved(folder).parts[-2:]))
        ):
            before = _previous_latest.pop(link, None)
            link.unlink()
            if before is not None:
                link.symlink_to(before)
    except OSError:
        pass


def job_choices(hc) -> dict:
    """The summary's `choices` (the config groups the job picked, Hydra's own left out) and, in a
    sweep, `swept` (the keys it varies: HParams' first columns)."""
    out = {"choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}}
    swept = os.environ.get(SWEPT_ENV)
    return {**out, "swept": [k for k in swept.split(",") if k]} if swept is not None else out


def sweep_folder(hc) -> Path | None:
    """The sweep folder of a multirun job (Hydra's config `hc`); None for a single run."""
    from hydra.types import RunMode

    return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


class SavedJob(NamedTuple):
    """What Hydra would have written into RUN/.hydra/ at the job's start: the job's config, Hydra's
    (hydra.yaml) and the command line's overrides. Copied when the job starts, written by
    run_starts."""

    config: DictConfig
    hydra: DictConfig
    overrides: list

    @classmethod
    def of(cls, config: DictConfig) -> SavedJob:
        from hydra.core.hydra_config import HydraConfig

        hydra = copy.deepcopy(HydraConfig.instance().cfg)
        return cls(copy.deepcopy(config), hydra, list(hydra.hydra.overrides.task))

    def write(self, run_dir: Path) -> None:
        folder = Path(run_dir) / ".hydra"
        folder.mkdir(exist_ok=True)
        for name, node in (
            ("config.yaml", self.config),
            ("hydra.yaml", self.hydra),
            ("overrides.yaml", OmegaConf.create(self.overrides)),
        ):
            files.write_atomic(folder / name, OmegaConf.to_yaml(node).encode("utf-8"))


def run_starts(run_dir: Path, sweep_dir: Path | None = None, saved: SavedJob | None = None) -> None:
    """A run has been set up in `run_dir` (its lock held) and starts training: write its saved
    config (`saved`; none for resume=, whose saved config is the record of what ran), point
    `latest` at it (at its sweep's folder for a sweep job) and say where it is. Only here: a run or
    sweep that never trains leaves its folder and `latest` as they were."""
    if saved is not None:
        saved.write(run_dir)
    point_latest(sweep_dir if sweep_dir is not None else run_dir)
    print(f"runner: run folder {shown(run_dir)}", file=sys.stderr)


def run_ends(run_dir: Path, status: str) -> None:
    """The run's last lines: its folder again, with how it ended (nothing if a user error removed
    the folder), and for a run that stopped before its end with a checkpoint to go on from, the
    command that continues it (quoted as Hydra and the shell need: a sweep job's folder name holds
    `=` and `,`)."""
    if not Path(run_dir).is_dir():
        return
    print(f"runner: run folder {shown(run_dir)} ({status})", file=sys.stderr)
    if status not in ("completed", "diverged") and any(
        (Path(run_dir) / "checkpoints").glob("step-*.pt")
    ):
        print(f"runner: continue it with: {resume_command(run_dir)}", file=sys.stderr)


class FolderBefore:
    """A run (or sweep) folder as it was before this process wrote anything into it, so that a
    refused start leaves it exactly so: the folders it created are removed (an `outputs/DATE/` too,
    when empty), a folder that existed keeps its entries and its logs' lengths, and nothing the run
    did not write is deleted. `fresh`: the folder counts as made for this run (a sweep job's, which
    Hydra creates with its empty log before the job's code runs)."""

    OURS = (".hydra", lock.NAME)  # what a refused run may have added to a folder, besides its *.log

    def __init__(self, folder: Path, fresh: bool = False):
        self.folder = resolved(folder)
        self.created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        if fresh and not self.created:
            self.created = [self.folder]
        existed = not self.created
        self.entries = set(os.listdir(self.folder)) if existed else set()
        self.logs = {p.name: p.stat().st_size for p in self.folder.glob("*.log")} if existed else {}

    def restore(self) -> None:
        forget_latest(self.folder)
        # made by this run: what is in it is the run's own (its log, its lock)
        if self.created:
            if self.folder.is_dir() and only_ours(self.folder):
                shutil.rmtree(self.folder)
            for p in self.created[1:]:
                _rmdir_if_empty(p)
            return
        for name in set(os.listdir(self.folder)) - self.entries:
            if name in self.OURS or name.endswith(".log"):
                path = self.folder / name
                shutil.rmtree(path) if files.kind(path) == "folder" else path.unlink()
        for name, size in self.logs.items():  # never through a link: it is not the run's log
            if files.kind(self.folder / name) == "file":
                with open(self.folder / name, "rb+") as f:
                    f.truncate(size)


def only_ours(folder: Path) -> bool:
    """Whether `folder` holds only what a run writes before it trains: lock, log (and .hydra/)."""
    return all(p.name in FolderBefore.OURS or p.suffix == ".log" for p in folder.iterdir())


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # not empty (another run's folder is in it) or already gone
        pass


_before: dict[Path, FolderBefore] = {}  # resolved folder → as it was before this process wrote


def before(folder: Path, fresh: bool = False) -> None:
    """Remember `folder` as it is now (the first time only: a single run's is taken before Hydra
    touches it, by CheckOutputFolder)."""
    path = resolved(folder)
    if path not in _before:
        _before[path] = FolderBefore(path, fresh)


def job_starts(run_dir: Path, sweep_job: bool) -> None:
    """A job's code starts in `run_dir`: remember the folder as it is (a sweep job's holding only
    the empty log Hydra just made counts as made for it) and take its lock. FolderBusy (nothing of
    the folder touched) when another process writes it."""
    run_dir = resolved(run_dir)
    fresh = sweep_job and all(
        p.suffix == ".log" and p.is_file() and p.stat().st_size == 0 for p in run_dir.iterdir()
    )
    before(run_dir, fresh)
    lock.hold(run_dir)


def refused(run_dir: Path) -> None:
    """A user error stopped the run before it trained: leave its folder as it was found. Only a
    folder this process holds is touched (one another process holds is that process's)."""
    try:
        path = resolved(run_dir)
    except files.FolderError:
        return
    if not lock.held(path):
        return
    state = _before.pop(path, None)
    lock.release(path)
    if state is not None:
        state.restore()


def refused_sweep(sweep_dir: Path) -> None:
    """A sweep refused before its first job (hydra_plugins.runner_sweeper): a folder it created
    goes, multirun.yaml (the sweeper's first file) with it, and multirun/latest points where it
    pointed before."""
    state = _before.get(resolved(sweep_dir))
    if state is not None and state.created:
        (Path(sweep_dir) / "multirun.yaml").unlink(missing_ok=True)
    refused(sweep_dir)


class CheckOutputFolder(Callback):
    """Before Hydra creates the run (or sweep) folder: refuse a resume= that names no run (so a typo
    creates nothing), make sure the folder can be written, so either mistake is one clear line
    instead of a traceback, and take its lock (a sweep's too: a second sweep into a running one is
    refused before it writes anything)."""

    def _check(self, folder: str, key: str) -> None:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write_test_{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            _exit(
                f"cannot write the run folder {path} ({e.strerror or e}): choose another place "
                f"with {key}=/a/writable/folder, or fix the permissions"
            )

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        resume = OmegaConf.select(config, "resume")
        if resume:
            try:
                # before the check below: it would create the folder resume= names
                load_saved_config(resume)
            except ConfigError as e:
                _exit(str(e))
        self._hold(config.hydra.run.dir, "hydra.run.dir", resume)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # a sweep refused before its first job leaves no trace; two sweeps never share a folder
        self._hold(config.hydra.sweep.dir, "hydra.sweep.dir")

    def _hold(self, folder: str, key: str, resume: str | None = None) -> None:
        """Remember the folder as it is, make sure it can be written, and take its lock before Hydra
        or the run writes anything into it."""
        try:
            before(folder)
        except files.FolderError as e:
            _exit(str(e))
        self._check(folder, key)
        try:
            lock.hold(folder, "resume=... of another run or hydra.run.dir" if resume else key)
        except files.FolderError as e:  # busy, or a .lock that is not one: the folder is as it was
            _exit(str(e))


class SweepFolder(Callback):
    """The swept keys for the jobs' folder names; at the sweep's end the sweep folder is the last
    line, after the report (python -m runner.analysis.report SWEEP) when report=true.
    multirun/latest moves to the sweep when its first job starts training (run_starts), so a sweep
    whose jobs all fail never becomes it."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # job folder names and HParams columns read it
        os.environ[SWEPT_ENV] = ",".join(swept_keys(config))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if OmegaConf.select(config, "report", default=False):
            _report(sweep)
        print(f"runner: sweep folder {shown(sweep)}", file=sys.stderr)


def _report(sweep: Path) -> None:
    """Run the report on the finished sweep; its failure is reported, never the sweep's (its runs
    are all saved)."""
    import traceback

    from runner.analysis import report

    try:
        failed = report.main([str(sweep)]) != 0
    except Exception:  # a bug in the report: its traceback, then how to run it again
        traceback.print_exc()
        failed = True
    if failed:
        print(
            "runner: the report failed; the sweep's runs are saved: python -m "
            f"runner.analysis.report {shlex.quote(shown(sweep))}",
            file=sys.stderr,
        )


def _exit(message: str) -> None:
    print(f"runner: error: {message}", file=sys.stderr)
    sys.exit(2)
