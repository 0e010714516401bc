"""Hydra's basic sweeper, with every job's configuration validated before the first job trains.

The basic sweeper composes each batch of jobs (the whole sweep is one batch unless
hydra.sweeper.max_batch_size says otherwise) before launching it, which catches keys that do not
exist; a value the runner refuses (lr=-1, a preset that does not fit) would still surface only when
its job came up, after earlier jobs trained. Here each composed job also passes
runner.config.validate, and a refusal is one line naming the job and the setting, before anything
trains, whatever the launcher.

The sweep's multirun.yaml (its command: what `python -m runner resume=SWEEP_DIR` runs again) is
written only into a sweep folder that has none: a sweep started into an existing folder, or
continued, leaves the first one's file as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from runner.engine import files


class ValidatingSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        """BasicSweeper.sweep, with multirun.yaml written only when the folder has none."""
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(
            parser.parse_overrides(params_conf), self.max_batch_size
        )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if files.kind(sweep_dir / "multirun.yaml") is None:  # a link there is not followed either
            text = OmegaConf.to_yaml(self.config)
            files.write_atomic(sweep_dir / "multirun.yaml", text.encode("utf-8"))
        returns, initial_job_idx = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for r in results:
                _ = r.return_value  # a failed job's exception, raised as the basic sweeper does
            initial_job_idx += len(batch)
            returns.append(results)
        return returns

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
