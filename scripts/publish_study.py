#!/usr/bin/env python
"""Turn a finished study sweep into docs/results/<date>-<where>/: what the README's numbers cite.

    python scripts/publish_study.py multirun/latest --where cpu-oscillation

writes, into OUT (default docs/results/<the sweep's date>-<where>/):
    README.md                the verdict first (report.md's), then the command that reproduces the
                             sweep, the machine, the software, the commit, the data, the runs (n,
                             status, wall time) and what each file is
    report.md, *.png         python -m runner.analysis.report's report of the sweep and its figures
    runs.csv, configs.csv    the report's tables as data
    <job>.summary.json       each run's summary.json
    <job>.metrics.jsonl.gz   each run's records, gzipped (python -m runner.analysis.report reads a
                             folder of them once unpacked: README.md says how)
Nothing else is copied: no image, no checkpoint. It refuses a sweep with a run that did not complete
(a published number must stand on every run its command starts) unless --partial says otherwise,
and then README.md names the runs missing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from runner.analysis.report import main as report_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("python", "torch", "torchvision", "platform")


def jobs(sweep: Path) -> list[Path]:
    """The sweep's run folders (those with .hydra/), in job order."""
    found = [d for d in sweep.iterdir() if (d / ".hydra").is_dir()]
    return sorted(found, key=lambda d: int(d.name.split("_", 1)[0]) if d.name[0].isdigit() else 0)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def command(sweep: Path) -> str:
    """The command line that started the sweep, from Hydra's multirun.yaml (data.root shown as
    DIR: the folder is the machine's, the data row says what is in it)."""
    import yaml

    saved = yaml.safe_load((sweep / "multirun.yaml").read_text(encoding="utf-8"))
    task = saved.get("hydra", {}).get("overrides", {}).get("task", [])
    shown = ["data.root=DIR" if t.startswith("data.root=") else t for t in task]
    return "python -m runner " + " ".join(shown)


def verdict(report_md: str) -> str:
    """report.md's verdict section, or a line saying it has none."""
    if "## Verdict" not in report_md:
        return "## Verdict\n\nThe report has no verdict: no run recorded the chain.\n"
    part = report_md.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    return "## Verdict" + part.rstrip() + "\n"


def facts_table(summaries: list[dict], sweep: Path) -> str:
    """Date, machine, software, commit and data of the sweep, from its runs' summary.json."""
    first = summaries[0]
    env, data = first.get("env", {}), first.get("data", {})
    commits = {(s.get("code") or {}).get("commit") for s in summaries}
    dirty = any((s.get("code") or {}).get("dirty") for s in summaries)
    commit = ", ".join(sorted(c for c in commits if c)) or "not recorded"
    threads = {(s.get("env") or {}).get("torch_threads") for s in summaries}
    machine = f"{env.get('cpu_name') or env.get('device_name')}, {env.get('cpu_count')} cores"
    rows = [
        ("sweep", f"{sweep.parent.name}/{sweep.name}"),
        ("machine", f"{machine}; torch threads {', '.join(map(str, sorted(threads - {None})))}"),
        ("software", ", ".join(f"{k} {env.get(k)}" for k in VERSIONS)),
        ("code", f"commit {commit}" + (" (with uncommitted changes)" if dirty else "")),
        (
            "data",
            f"{data.get('name')} ({data.get('source')}): {data.get('n_train')} training and "
            f"{data.get('n_val')} validation images, fingerprint {data.get('fingerprint')}",
        ),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def runs_table(folders: list[Path], summaries: list[dict]) -> str:
    rows = ["| job | status | wall time (s) | test acc of best.pt |", "|---|---|---|---|"]
    for d, s in zip(folders, summaries):
        acc = s.get("test_acc_selected")
        wall = s.get("wall_time_s")
        rows.append(
            f"| {d.name} | {s.get('status', 'no summary')} | "
            f"{'-' if wall is None else f'{wall:.0f}'} | {'-' if acc is None else f'{acc:.4f}'} |"
        )
    return "\n".join(rows) + "\n"


FILES = """## Files

| file | what |
|---|---|
| `report.md`, `*.png`, `runs.csv`, `configs.csv` | `python -m runner.analysis.report SWEEP` |
| `<job>.summary.json`, `<job>.metrics.jsonl.gz` | each run's summary and records |

To read the records again: for each job, `mkdir -p R/<job> && zcat <job>.metrics.jsonl.gz >
R/<job>/metrics.jsonl && cp <job>.summary.json R/<job>/summary.json`, then
`python -m runner.analysis.report R`.
"""


def publish(sweep: Path, out: Path, where: str, partial: bool) -> int:
    folders = jobs(sweep)
    summaries = [read_json(d / "summary.json") for d in folders]
    missing = [d.name for d, s in zip(folders, summaries) if s.get("status") != "completed"]
    if not folders or (missing and not partial):
        why = "no runs" if not folders else f"runs not completed: {', '.join(missing)}"
        fix = "--partial publishes them as they are"
        print(f"publish_study: {sweep}: {why} ({fix})", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if report_main([str(sweep), "--out", str(out)]) != 0:
        return 1
    shutil.rmtree(out / "runs", ignore_errors=True)  # per-run loss figures: in the records already
    for d, s in zip(folders, summaries):
        if s:
            (out / f"{d.name}.summary.json").write_text(json.dumps(s, indent=2) + "\n")
        if (d / "metrics.jsonl").is_file():
            packed = out / f"{d.name}.metrics.jsonl.gz"
            with open(d / "metrics.jsonl", "rb") as f, gzip.open(packed, "wb") as g:
                shutil.copyfileobj(f, g)
    done = [s for s in summaries if s]
    report_md = (out / "report.md").read_text(encoding="utf-8")
    note = f"\nNot completed, published as they are: {', '.join(missing)}.\n" if missing else ""
    readme = "\n".join(
        [
            f"# {sweep.parent.name}, {where}: {len(folders)} runs of one study sweep\n",
            verdict(report_md),
            f"## How it was made\n\n```\n{command(sweep)}\n```\n",
            facts_table(done, sweep),
            f"## Runs\n\n{runs_table(folders, summaries)}{note}",
            FILES,
        ]
    )
    (out / "README.md").write_text(readme, encoding="utf-8")
    print(f"publish_study: wrote {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python scripts/publish_study.py", description=__doc__.splitlines()[0]
    )
    p.add_argument("sweep", help="the finished sweep (multirun/DATE/TIME_x or multirun/latest)")
    p.add_argument("--where", default="cpu-oscillation", help="the folder name's tail")
    p.add_argument("--out", help="where to write (default docs/results/<the sweep's date>-<where>)")
    p.add_argument("--partial", action="store_true", help="publish runs that did not complete")
    args = p.parse_args(argv)
    sweep = Path(args.sweep).resolve()
    if not (sweep / "multirun.yaml").is_file():
        print(f"publish_study: {sweep} is not a sweep folder (no multirun.yaml)", file=sys.stderr)
        return 2
    name = f"{sweep.parent.name}-{args.where}"
    out = Path(args.out) if args.out else ROOT / "docs" / "results" / name
    return publish(sweep, out, args.where, args.partial)


if __name__ == "__main__":
    sys.exit(main())
