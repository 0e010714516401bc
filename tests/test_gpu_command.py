"""The GPU command (scripts/gpu.py, `make gpu`) cannot waste its run: what it needs is checked in
one line before anything starts; the compile probe comes first and switches every later stage to
the no-compile path when compile cannot work; the preflight's failure stops the rest, its running
out of time does not; the exactness checks come right after it; a stage cut short by the deadline
is recorded, not counted as a failure. All of it on a CPU: the plan with a GPU stage runner faked,
the time rules with real subprocesses, the whole command in --device cpu --quick mode."""

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from scripts import gpu
from scripts.gpu_results import bench_figures, figures

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["compile_probe", "preflight", "checks", "default_cold", "default_warm"]
ORDER += ["bench", "bench_more"]


def gpu_command(*args, timeout=120, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------- what it needs, in one line

# Imported by `site` at start-up: hydra, tensorboard and pytest cannot be imported, as on a bare
# torch image.
BARE_IMAGE = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    class _Absent(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("hydra", "tensorboard", "pytest"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Absent())
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_gpu_command_refuses_in_one_line_without_cuda(tmp_path):
    r = gpu_command("--out", str(tmp_path / "out"))
    assert r.returncode == 2 and not (tmp_path / "out").exists()
    assert r.stderr.strip().count("\n") == 0 and "no CUDA device here" in r.stderr
    assert "--device cpu" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_everything_missing_is_named_in_one_line_before_anything_starts(tmp_path):
    """On a bare torch image without the carried wheels, a wrong data path and no GPU: one line
    names the packages (as pip knows them), the data and the device, each with its fix."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BARE_IMAGE)
    out, data = tmp_path / "out", tmp_path / "cifar10-jpg.tar.gz"
    bare = {"PYTHONPATH": str(tmp_path / "site")}
    r = gpu_command("--data", str(data), "--out", str(out), env=bare)
    assert r.returncode == 2 and not out.exists() and r.stdout == ""
    line = r.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("gpu: nothing measured: ")
    python = ".".join(map(str, sys.version_info[:2]))
    assert f"not importable here (Python {python}): hydra-core, tensorboard" in line
    assert "pytest" in line and "omegaconf" not in line and "tqdm" not in line  # only the absent
    assert f"--data {data} is not a tarball here" in line and "no CUDA device here" in line
    assert f"make gpu-wheels GPU_PYTHON={python}" in line and "--device cpu --quick" in line


# ---------------------------------------------------------------- the plan, on a faked GPU


class FakeStages:
    """gpu.Stages with each stage's outcome given instead of run: {name: (status, figures)}."""

    def __init__(self, outcomes: dict | None = None):
        self.outcomes, self.ran, self.results = outcomes or {}, [], {"stages": {}}

    def run(self, name, cmd, env=None, figures=None):
        status, found = self.outcomes.get(name, ("passed", {}))
        self.ran.append((name, cmd, env or {}))
        stage = {"command": gpu.command_line(cmd), "status": status, "limit_s": 90.0, "exit": 1}
        self.results["stages"][name] = {**stage, "figures": found}
        return self.results["stages"][name]

    def skip(self, name, why):
        self.results["stages"][name] = {"status": f"skipped: {why}"}

    def save(self, name, stage):
        pass

    def command(self, name) -> str:
        return next(gpu.command_line(cmd) for n, cmd, _ in self.ran if n == name)


def plan(tmp_path, outcomes=None, device="cuda") -> FakeStages:
    st = FakeStages(outcomes)
    args = SimpleNamespace(device=device, quick=False, epochs=2)
    data = {"name": "image_folder", "root": "/data/cifar10-jpg", "tarball": "d.tar.gz"}
    gpu.stages(args, st, data, tmp_path)
    return st


def test_on_a_gpu_the_probe_comes_first_then_the_preflight_then_the_exactness_checks(tmp_path):
    st = plan(tmp_path, {"compile_probe": ("passed", {"model": "resnet8v1", "seconds": 31.0})})
    assert [name for name, _, _ in st.ran] == ORDER
    assert "compile_probe.py --device cuda" in st.command("compile_probe")
    assert "-m gpu -x tests/test_gpu_preflight.py" in st.command("preflight")
    assert "-m gpu and not compile tests/test_gpu.py" in st.command("checks")  # exactness only
    probe_cache = st.ran[0][2]["TORCHINDUCTOR_CACHE_DIR"]  # the preflight trains the probe's model
    assert st.ran[1][2]["TORCHINDUCTOR_CACHE_DIR"] == probe_cache != str(tmp_path / "compile_cache")
    cold = st.command("default_cold")
    assert "trainer.compile" not in cold.replace("trainer.compile_cache", "")  # as shipped
    assert "data.root=/data/cifar10-jpg" in cold and "epochs=2 batch_size=128" in cold
    bench = st.command("bench")
    assert "--paths graphs,compile+graphs" in bench and "--jobs 8" in bench
    # the loop and its evaluation on the paths the probe allowed, then the pack
    assert bench.count("--paths graphs,compile+graphs") == 2 and "bench_pack.py" in bench
    more = st.command("bench_more")
    assert "bench.py --device cuda --data-root /data/cifar10-jpg --paths eager" in more
    assert "--batch-sizes 128,64" in more and "bench_ops.py" in more
    assert st.results["compile"]["used"] is True and "31.0 s" in st.results["compile"]["note"]


@pytest.mark.parametrize("probe", ["failed", "out of time", "cut short by the deadline"])
def test_when_the_compile_probe_fails_every_later_stage_runs_without_compile(tmp_path, probe):
    error = {"error": "InductorError: InvalidCxxCompiler: No working C++ compiler found"}
    st = plan(tmp_path, {"compile_probe": (probe, error)})
    assert [name for name, _, _ in st.ran] == ORDER  # nothing skipped for it
    assert "-m gpu and not compile -x tests/test_gpu_preflight.py" in st.command("preflight")
    for name in ("default_cold", "default_warm"):
        tail = "trainer.compile=false data=image_folder data.root=/data/cifar10-jpg epochs=2"
        assert st.command(name).endswith(f"{tail} batch_size=128")
    assert "--paths graphs " in st.command("bench")
    note = st.results["compile"]["note"]
    assert st.results["compile"]["used"] is False and "trainer.compile=false" in note
    assert ("InvalidCxxCompiler" in note) == (probe == "failed")
    assert gpu.compile_verdict(st.results["stages"]["compile_probe"]) == (False, note)


def test_a_preflight_that_fails_stops_every_later_stage_and_one_out_of_time_does_not(tmp_path):
    st = plan(tmp_path, {"preflight": ("failed", {})})
    assert [name for name, _, _ in st.ran] == ["compile_probe", "preflight"]
    later = {k: v["status"] for k, v in st.results["stages"].items() if k in ORDER[2:]}
    assert list(later) == ORDER[2:] and set(later.values()) == {"skipped: the preflight failed"}
    st = plan(tmp_path, {"preflight": ("out of time", {})})
    assert [name for name, _, _ in st.ran] == ORDER


def test_without_cuda_the_gpu_stages_are_recorded_as_skipped_in_their_place(tmp_path):
    st = plan(tmp_path, device="cpu")
    assert list(st.results["stages"]) == ORDER
    assert [name for name, _, _ in st.ran] == ["compile_probe", *ORDER[3:]]
    assert st.results["stages"]["checks"]["status"] == "skipped: no CUDA (it needs a GPU)"


def test_the_results_say_what_each_default_run_ran_and_why_it_fell_back():
    fell = {
        "path": {"precision": "bf16", "compile": False, "cuda_graphs": True},
        "path_fallback": [
            {"from": "bf16, compiled, CUDA graphs", "after_steps": 0, "reason": "InductorError: x"}
        ],
    }
    ran = {"path": {"precision": "bf16", "compile": True, "cuda_graphs": True}}
    f = figures({"default_cold": {"figures": fell}, "default_warm": {"figures": ran}})
    assert f["default run (cold compile cache): what ran"] == (
        "bf16, CUDA graphs; fell back from bf16, compiled, CUDA graphs after 0 steps: "
        "InductorError: x"
    )
    assert f["default run (warm compile cache): what ran"] == "bf16, compiled, CUDA graphs"
    assert figures({})["default run (cold compile cache): what ran"] == "not measured"


def test_a_bench_stage_reads_the_results_of_each_of_its_benchmarks(tmp_path):
    """The loop rates (bench.py), evaluation times (bench_evaluation.py) and the pack
    (bench_pack.py), each in its own JSON, make the one table the bench stage always gave."""
    loop = {"model": "resnet56v2", "loop_images_per_s": {"graphs": {"128": 20_000.0}}}
    times = {"model": "resnet56v2", "validation_10000_images_s": {"graphs": 0.25}}
    times["recalibration_s"] = {"graphs": 0.01}
    pack = {"k": 8, "ratio": 2.5, "pack_images_per_s": 50_000.0, "sequential_images_per_s": 2e4}
    rows = {"bench": {"summary": loop}, "bench_evaluation": {"summary": times, "evaluation": [1]}}
    rows["bench_pack"] = {"summary": {"model": "resnet20v1"}, "pack": pack}
    for name, r in rows.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    found = bench_figures(tmp_path)
    assert found["pack"] == pack and found["evaluation"] == [1]
    assert found["summary"]["model"] == "resnet56v2"  # the loop's: the rows it names
    table = figures({"bench": {"figures": found}})
    assert table["loop, graphs, batch 128: images/s"] == "20,000"
    assert table["validation of 10,000 images (graphs)"] == "0.250 s"
    assert table["BatchNorm recalibration (graphs)"] == "0.0100 s"
    assert table["pack of 8: aggregate images/s vs sequential"] == "50,000 vs 20,000 (2.50×)"
    assert bench_figures(tmp_path / "absent") == {}  # a stage that wrote nothing


# ---------------------------------------------------------------- the time rules, real subprocesses

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def stages_with(tmp_path, monkeypatch, deadline, **budget) -> "gpu.Stages":
    for name, limits in budget.items():
        monkeypatch.setitem(gpu.BUDGET, name, limits)
    env = {"card": "cpu", "code": {"commit": None, "dirty": None}, "date": "today", "driver": None}
    env |= {"torch": torch.__version__, "cuda": None, "cudnn": None, "python": "3", "cpus": 2}
    results = {"env": env, "deadline_s": deadline, "data": None, "stages": {}}
    return gpu.Stages(results, tmp_path, deadline)


def test_a_stage_cut_short_by_the_deadline_is_recorded_but_not_a_failure(tmp_path, monkeypatch):
    """bench_more takes what is left of the deadline: stopped there, it did not fail."""
    st = stages_with(tmp_path, monkeypatch, gpu.WRITE_S + 1, bench_more=(None, 0))
    stage = st.run("bench_more", SLEEP)
    assert stage["status"] == "cut short by the deadline" and stage["exit"] is None
    assert st.failed() == []
    saved = json.loads((tmp_path / "gpu.json").read_text())["stages"]["bench_more"]
    assert saved["status"] == "cut short by the deadline"
    assert "| bench_more | cut short by the deadline |" in (tmp_path / "README.md").read_text()


def test_past_its_own_limit_or_failing_is_a_failure_and_without_time_skipped(tmp_path, monkeypatch):
    budget = dict(checks=(1, 0), bench=(60, 0), default_warm=(60, 10_000), compile_probe=(60, 0))
    st = stages_with(tmp_path, monkeypatch, 60, **budget)
    assert st.run("checks", SLEEP)["status"] == "out of time"  # its own 1 s, with the deadline far
    assert st.run("bench", [sys.executable, "-c", "raise SystemExit(3)"])["exit"] == 3
    assert st.run("default_warm", SLEEP)["status"].startswith("skipped: ")
    fails = [sys.executable, "-c", "raise SystemExit(1)"]
    assert st.run("compile_probe", fails)["status"] == "failed"
    assert st.failed() == ["checks", "bench"]  # the probe decides the path, it checks nothing


# ---------------------------------------------------------------- the whole command, CPU mode


def jpeg_tarball(folder: Path) -> Path:
    """A tarball of a few JPEGs in the image-folder layout."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 48), ("test", 16)):
        for c in ("cat", "dog"):
            (folder / "jpg" / split / c).mkdir(parents=True)
            for k in range(n):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / "jpg" / split / c / f"{k}.jpg")
    with tarfile.open(folder / "data.tar.gz", "w:gz") as tar:
        tar.add(folder / "jpg", arcname="cifar10-jpg")
    return folder / "data.tar.gz"


@pytest.mark.slow
def test_the_gpu_command_runs_its_stages_on_cpu_and_rewrites_its_results_after_each(tmp_path):
    """--device cpu --quick on a tarball of a few JPEGs, with a C++ compiler that is not there: the
    probe fails (Inductor compiles C++ on a CPU), every later stage runs without compile and
    passes, exit 0; then one with too short a deadline for anything but skips."""
    data = jpeg_tarball(tmp_path)
    broken = {"CXX": str(tmp_path / "no-such-compiler")}
    quick = ("--device", "cpu", "--quick")
    out = tmp_path / "out"
    r = gpu_command(*quick, "--data", str(data), "--out", str(out), timeout=400, env=broken)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    res = json.loads((tmp_path / "out" / "gpu.json").read_text())
    st = res["stages"]
    assert list(st) == ORDER
    assert st["compile_probe"]["status"] == "failed"
    assert "InvalidCxxCompiler" in st["compile_probe"]["figures"]["error"]
    assert res["compile"]["used"] is False and "the probe failed" in res["compile"]["note"]
    assert st["preflight"]["status"].startswith("skipped: no CUDA")
    assert all(st[k]["status"] == "passed" for k in ORDER[3:]), st
    assert all("trainer.compile=false" in st[k]["command"] for k in ORDER[3:5])
    assert st["default_cold"]["figures"]["status"] == "completed"
    assert st["default_warm"]["figures"]["images_per_s"] > 0
    assert st["bench"]["figures"]["pack"]["k"] == 2
    assert st["bench_more"]["figures"]["summary"]["tutorial_images_per_s"]
    assert set(res["env"]) >= {"card", "driver", "torch", "date", "code"}
    assert res["data"]["name"] == "image_folder" and res["data"]["tarball"] == "data.tar.gz"
    assert st["default_cold"]["figures"]["path"]["device"] == "cpu"
    assert "data.root=" in st["default_cold"]["command"]
    table = (tmp_path / "out" / "README.md").read_text()
    assert "pack of 2: aggregate images/s vs sequential" in table
    # the loop and the evaluation of the bench stage, each from its own benchmark
    assert (
        "| loop, eager, batch 16: images/s |" in table and "| validation of 10,000 images" in table
    )
    assert st["bench_more"]["figures"]["evaluation"][0]["path"] == "eager"
    assert "default run (warm compile cache)" in table and "torch.compile: not used" in table
    assert "| default run (cold compile cache): what ran | fp32 |" in table  # nothing fell back
    assert "every stage that ran passed" in r.stdout
    r = gpu_command(*quick, "--deadline", "12", "--out", str(tmp_path / "short"))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    st = json.loads((tmp_path / "short" / "gpu.json").read_text())["stages"]
    probe = st["compile_probe"]["status"]
    assert probe.startswith("skipped: ") and "deadline" in probe


@pytest.mark.slow
def test_the_compile_probe_compiles_where_torch_compile_works(tmp_path):
    """A fresh compile cache: the probe compiles for real (on a CPU, Inductor's C++)."""
    out = tmp_path / "probe.json"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "compile_probe.py"), "--device", "cpu", "--quick"]
    cmd += ["--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["compiled"] is True and result["error"] is None and result["seconds"] > 0
    assert any((tmp_path / "cache").rglob("*.py")) or any((tmp_path / "cache").iterdir())
