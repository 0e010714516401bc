"""The benchmarks (scripts/bench*.py) run as a bare GPU machine runs them: in a subprocess where
hydra and omegaconf cannot be imported and the package is not installed, so that `runner` comes only
from the script's own sys.path entry (ROOT/src). Shared by the tests of each benchmark."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Imported by `site` at start-up in the subprocess and in any process it starts (DataLoader
# workers): hydra and omegaconf cannot be imported, and the editable install's finder is gone.
SITECUSTOMIZE = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    class _Blocked(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("hydra", "omegaconf"):
                raise ImportError(f"{name} is blocked for this test (a bare machine without hydra)")
            return None

    sys.meta_path[:] = [f for f in sys.meta_path
                        if "editable" not in (getattr(f, "__module__", "") or "")
                        and "editable" not in type(f).__module__]
    sys.meta_path.insert(0, _Blocked())
""")


def bare_env(folder: Path) -> dict:
    """The environment of a bare machine, its sitecustomize written under `folder`."""
    site = folder / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_bare(script: str, folder: Path, *args: str) -> tuple[dict, str]:
    """`python scripts/SCRIPT.py --quick --device cpu --threads 1 ARGS` in a bare environment,
    from `folder`; its JSON results and stdout."""
    out = folder / "tmp" / f"{script}.json"  # a folder that is not there yet: the script makes it
    cmd = [sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--quick", "--device", "cpu"]
    cmd += ["--threads", "1", *args, "--out", str(out)]
    r = subprocess.run(
        cmd, env=bare_env(folder), cwd=folder, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text()), r.stdout


def assert_ran_bare(res: dict) -> None:
    """What a benchmark says it ran on, and that it ran without hydra and the installed package."""
    env = res["env"]
    assert env["device"] == "cpu" and env["torch"] and env["torchvision"] and env["python"]
    assert env["cpu_count"] >= 1 and "cuda" in env and "cudnn" in env
    assert env["hydra_loaded"] is False
    assert Path(env["runner_path"]) == ROOT / "src" / "runner"
    assert set(env["code"]) == {"commit", "dirty"}  # runner.engine.provenance's block
    assert env["wall_s"] > 0 and "loadavg_end" in env
