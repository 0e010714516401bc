"""Hydra's basic sweeper, with every job's configuration validated before the first job trains.

The basic sweeper composes each batch of jobs (the whole sweep is one batch unless
hydra.sweeper.max_batch_size says otherwise) before launching it, which catches keys that do not
exist; a value the runner refuses (lr=-1, a preset that does not fit) would still surface only when
its job came up, after earlier jobs trained. Here each composed job also passes
runner.config.validate, and a refusal is one line naming the job and the setting, before anything
trains, whatever the launcher.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import open_dict


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(batch)
        from runner.config import UserError, validate
        from runner.sweeps import callbacks

        for overrides in batch:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            if cfg.get("resume"):
                continue  # a resume= job is checked against its own folder's config when it runs
            with open_dict(cfg):
                del cfg["hydra"]
            try:
                validate(cfg)
            except UserError as e:
                job = " ".join(overrides) or "(no overrides)"
                callbacks.refused_sweep(Path(self.config.hydra.sweep.dir))
                print(
                    f"runner: error: sweep job [{job}]: {e} (no job of the sweep was started)",
                    file=sys.stderr,
                )
                sys.exit(2)
