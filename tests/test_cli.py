"""`python -m runner` around the training: where runs go, what they are called, how to find them, and what a
sweeper gets back."""
import pytest
from conftest import run_cli


@pytest.mark.slow
def test_a_resume_to_a_folder_without_a_run_fails_before_creating_anything(tmp_path):
    r = run_cli(["resume=typo/path", "epochs=3"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "resume='typo/path': no run there" in r.stderr and "give the folder of a run" in r.stderr
    assert list(tmp_path.iterdir()) == [], "nothing created: not the typo's folder, not outputs/"
