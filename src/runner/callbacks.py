"""Hydra's side of the run folders: checked before Hydra creates them.

configs/config.yaml lists the callbacks under hydra.callbacks. Nothing here imports torch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.config import ConfigError


def saved_config(resume: str) -> Path:
    """The saved config of the run folder `resume` (its .hydra/config.yaml); ConfigError when there is none."""
    saved = Path(resume).expanduser().resolve() / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={resume!r}: no run there (expected {saved}); give the folder of a run, "
                          "e.g. resume=outputs/2026-01-31/12-00-00_abc123")
    return saved


class CheckOutputFolder(Callback):
    """Before Hydra creates the run (or sweep) folder: refuse a resume= that names no run (so a typo creates
    nothing), and make sure the folder can be written, so either mistake is one clear line instead of a traceback."""

    def _check(self, folder: str, key: str) -> None:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write_test_{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            _exit(f"cannot write the run folder {path} ({e.strerror or e}): choose another place with "
                  f"{key}=/a/writable/folder, or fix the permissions")

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        resume = OmegaConf.select(config, "resume")
        if resume:
            try:
                saved_config(resume)  # before the check below: it would create the folder resume= names
            except ConfigError as e:
                _exit(str(e))
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")


def _exit(message: str) -> None:
    print(f"runner: error: {message}", file=sys.stderr)
    sys.exit(2)
