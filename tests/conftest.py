"""Shared helpers: compose the real configs the way `python -m runner` does, and run the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import runner.configs
from runner.config import register_resolvers, register_schema

ROOT = Path(__file__).resolve().parents[1]  # the checkout
CONFIG_DIR = str(Path(runner.configs.__file__).parent)
register_schema()
register_resolvers()
torch.set_num_threads(1)  # 2 cores: one pytest process plus one CLI subprocess, no oversubscription


# A tiny, fast run: ResNet20v1 on 512 synthetic images on the CPU, 2 epochs
# (configs/debug/tiny.yaml).
TINY = ["debug=tiny"]


# a saved config that is nine levels of nine YAML aliases: 400 bytes that expand to 9**9 strings
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def cli_env() -> dict:
    """The environment a CLI subprocess runs in: this checkout's src/ first (a relative
    PYTHONPATH=src would no longer point there from the subprocess's folder, and an installed copy
    elsewhere would be tested instead)."""
    src = str(ROOT / "src")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def run_cli(args, cwd, timeout=300, env_extra=None):
    """`python -m runner ARGS` in a subprocess; returns CompletedProcess (text)."""
    env = {**cli_env(), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def finished_run(tmp_path_factory, name: str, args) -> Path:
    """A run of `python -m runner ARGS` trained to its end in a folder of its own (for module-scoped
    fixtures)."""
    d = tmp_path_factory.mktemp(name) / "run"
    r = run_cli([*args, f"hydra.run.dir={d}"], cwd=d.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    return d


class Creates:
    """A pickled object whose unpickling would create `path`: a stand-in for any code a crafted file
    could run (a test then checks that the file was refused and `path` does not exist)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def make_run(root, date, name):
    """An empty run folder at ROOT/DATE/NAME, the layout `latest` links follow."""
    d = root / date / name
    d.mkdir(parents=True)
    return d


@pytest.fixture
def compose_config():
    return compose_cfg


def forbid_host_reads(monkeypatch, opt) -> None:
    """Make every device→host read of a tensor fail (on a GPU each is a sync, and inside a CUDA
    graph capture an error), except within torch.optim's own step: its CPU Adam reads its CPU step
    counter, while on CUDA the runner's fused (and, for graphs, capturable) Adam keeps the counter
    on the device."""
    inside_torch_optim = []
    real_step = opt.inner.step
    monkeypatch.setattr(
        opt.inner,
        "step",
        lambda: (inside_torch_optim.append(1), real_step(), inside_torch_optim.pop()),
    )

    def guard(name):
        original = getattr(torch.Tensor, name)

        def refuse(self, *a, **k):
            if inside_torch_optim:
                return original(self, *a, **k)
            raise AssertionError(f"a device value was read on the host ({name})")

        return refuse

    for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, guard(name))
