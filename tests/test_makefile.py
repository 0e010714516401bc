"""The Makefile's set-up commands: what each target installs into a fresh .venv (make's dry run)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dry_run(target: str, venv: Path) -> str:
    """What `make TARGET` would run in a clone without .venv (VENV points at a folder that does not
    exist)."""
    r = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_run_and_install_set_up_the_package_without_the_test_tools(tmp_path):
    for target in ("install", "run"):
        out = dry_run(target, tmp_path / "venv")
        assert "pip install --quiet -e ." in out and "[test]" not in out, target


def test_make_test_installs_the_test_extras(tmp_path):
    out = dry_run("test", tmp_path / "venv")
    assert "-e '.[test]'" in out and "pytest" in out
