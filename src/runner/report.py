"""`python -m runner.report DIR`: tables and figures over every run found under DIR.

DIR is a run folder, a sweep folder (multirun/DATE/TIME_x/) or any folder above them. A run folder is one that
holds summary.json, metrics.jsonl or .hydra/config.yaml. Its status comes from summary.json, else "running"
(metrics.jsonl only: still going, or killed) or "not started" (.hydra only).

A run's configuration is its flattened hparams (`optimizer.name`, `lr`, ...) without `seed` and the keys in
NOT_CONFIG; runs that differ only in seed form one configuration, summarized as mean ± sample std over its
completed runs (n). Writes OUT/report.md, OUT/runs.csv (one row per run), OUT/configs.csv and PNG figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

from runner.metrics import flatten as flatten_config
from runner.metrics import read_metrics
from runner.oscillation import oscillation_block, val_points

# keys that do not change what is trained: never split runs into configurations
# `reg` only feeds wd or l2 (whichever the preset uses), which are compared themselves
NOT_CONFIG = {"seed", "resume", "reg", "data.root", "data.download", "data.verify", "trainer.progress", "trainer.log_every"}
NOT_CONFIG_PREFIXES = ("log.",)  # logging options
ID_KEYS = ["optimizer.name", "lr", "wd", "l2"]  # always shown, in this order, before other swept keys
METRICS = ["best_val_acc", "final_val_acc", "final_val_loss", "final_train_loss", "steps", "epochs",
           "wall_time_s", "images_per_s"]
STATS = ["best_val_acc", "final_val_acc", "final_val_loss", "tv_per_epoch", "max_rise_rel", "n_rises",
         "roughness_ratio_mid", "roughness_ratio_last", "epochs_to_90", "epochs_to_92", "gen_gap", "final_weight_norm"]
TABLE_STATS = {"best_val_acc": "best val acc", "final_val_acc": "final val acc", "final_val_loss": "final val loss",
               "tv_per_epoch": "TV/epoch", "max_rise_rel": "max rise (rel)", "n_rises": "rises",
               "epochs_to_92": "epochs→92%", "gen_gap": "gen gap"}
CSV_NAMES = {"epochs": "epochs_done"}
SHORT = {"diverged": "div", "running": "run", "interrupted": "int", "not started": ""}


# ---------------------------------------------------------------- reading runs

def _num(x):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return x if math.isfinite(x) else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return read_metrics(path)
    except OSError:
        return []


def _read_yaml(path: Path):
    try:
        import yaml  # comes with omegaconf

        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # missing or unreadable: the run just has no hparams
        return None


def flatten(d: dict) -> dict:
    """runner.metrics.flatten, with lists as compact JSON strings so they compare and print as one value."""
    return {k: json.dumps(v, separators=(",", ":")) if isinstance(v, (list, tuple)) else v
            for k, v in flatten_config(d).items()}


def _natural(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def is_run_dir(d: Path) -> bool:
    return any((d / f).is_file() for f in ("summary.json", "metrics.jsonl", ".hydra/config.yaml"))


def find_run_dirs(root: Path) -> list[Path]:
    """Every run folder at or below root (a run folder holds no further runs)."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        if is_run_dir(d):
            found.append(d)
            dirnames[:] = []
        else:
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
    return found


def load_run(d: Path, root: Path, threshold: float | None = None) -> dict:
    """One run: status, flattened hparams, headline metrics, oscillation block, and curves for the figures."""
    summary = _read_json(d / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    records = _read_jsonl(d / "metrics.jsonl")
    hp = (summary or {}).get("hparams") or _read_yaml(d / ".hydra" / "config.yaml")
    hp = flatten(hp if isinstance(hp, dict) else {})
    if summary:
        status = summary.get("status") or "unknown"
    else:
        status = "running" if (d / "metrics.jsonl").is_file() else "not started"

    pts = val_points(records)
    accs = [p["acc"] for p in pts if p["acc"] is not None]
    steps = [r["step"] for r in records if _num(r.get("step")) is not None]
    epochs = [r["epoch"] for r in records if _num(r.get("epoch")) is not None]
    from_records = {"best_val_acc": max(accs, default=None), "steps": max(steps, default=None),
                    "final_val_acc": pts[-1]["acc"] if pts else None, "final_val_loss": pts[-1]["loss"] if pts else None,
                    "epochs": max(epochs, default=None)}
    metrics = {k: _num(summary.get(k)) if summary and k in summary else from_records.get(k) for k in METRICS}

    osc = (summary or {}).get("oscillation")
    # recompute when absent, or when asked for another rise threshold than the summary used
    if not isinstance(osc, dict) or (threshold is not None and records and osc.get("rise_threshold") != threshold):
        osc = oscillation_block(records, _num(hp.get("epochs")), 0.1 if threshold is None else threshold)

    rel = d.relative_to(root).as_posix()
    wnorm = sorted((r["epoch"], r["weight_norm"]) for r in records
                   if _num(r.get("epoch")) is not None and _num(r.get("weight_norm")) is not None)
    return {"path": root.name if rel == "." else rel, "status": status, "seed": hp.get("seed"), "hparams": hp,
            **metrics, "osc": osc, "val": [(p["epoch"], p["loss"], p["acc"]) for p in pts], "wnorm": wnorm}


def collect_runs(root, threshold: float | None = None) -> list[dict]:
    """Every run under root, in natural path order (job 10 after job 9)."""
    root = Path(root)
    runs = [load_run(d, root, threshold) for d in find_run_dirs(root)]
    return sorted(runs, key=lambda r: _natural(r["path"]))


# ---------------------------------------------------------------- configurations and seed statistics

def value(run: dict, key: str):
    """A headline metric (summary.json) or oscillation figure of a run."""
    return run.get(key) if key in METRICS else run["osc"].get(key)


def varying_keys(runs: list[dict]) -> list[str]:
    """Config keys with more than one value among the runs that have them (ID_KEYS first, then by name)."""
    seen: dict[str, set] = {}
    for r in runs:
        for k, v in r["hparams"].items():
            seen.setdefault(k, set()).add(float(v) if _num(v) is not None else repr(v))  # 30 and 30.0 agree
    keys = [k for k, vals in seen.items() if len(vals) > 1 and k not in NOT_CONFIG
            and not k.startswith(NOT_CONFIG_PREFIXES) and not k.endswith(("root", "dir", "path"))]
    return [k for k in ID_KEYS if k in keys] + sorted(k for k in keys if k not in ID_KEYS)


def _sort_key(v):
    return (0, v, "") if _num(v) is not None else (1, 0, "" if v is None else str(v))


def mean_std(xs: list) -> tuple:
    """(mean, sample std) of the finite values; std is None below two values."""
    xs = [x for x in xs if _num(x) is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def group_configs(runs: list[dict], keys: list[str] | None = None) -> list[dict]:
    """Runs sharing every varying key except seed, with mean ± std of STATS over their completed runs."""
    keys = varying_keys(runs) if keys is None else keys
    groups: dict[tuple, dict] = {}
    for r in runs:
        key = tuple(r["hparams"].get(k) for k in keys)
        g = groups.setdefault(key, {"key": key, "values": dict(zip(keys, key)), "hparams": r["hparams"], "runs": []})
        g["runs"].append(r)
    out = []
    for key in sorted(groups, key=lambda t: [_sort_key(v) for v in t]):
        g = groups[key]
        done = [r for r in g["runs"] if r["status"] == "completed"]
        g["n"] = len(done)
        g["statuses"] = Counter(r["status"] for r in g["runs"])
        g["stats"] = {k: mean_std([value(r, k) for r in done]) for k in STATS}
        for k in ("epochs_to_90", "epochs_to_92"):  # a mean over only the seeds that got there would flatter
            if any(value(r, k) is None for r in done):
                g["stats"][k] = (None, None)
        g["label"] = ", ".join(f"{k}={fmt(v)}" for k, v in g["values"].items()) or "all runs"
        out.append(g)
    return out


# ---------------------------------------------------------------- tables

def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _status_text(counts: Counter) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, row)) + " |" for row in rows])


def id_keys(runs: list[dict], keys: list[str]) -> list[str]:
    present = [k for k in ID_KEYS if any(k in r["hparams"] for r in runs)]
    return present + [k for k in keys if k not in present]


def config_table(groups: list[dict], cols: list[str]) -> str:
    def cell(g, k):
        m, s = g["stats"][k]
        return "-" if m is None else fmt(m) + ("" if s is None else f" ± {fmt(s, 2)}")

    header = cols + ["n", "runs"] + list(TABLE_STATS.values())
    rows = [[fmt(g["hparams"].get(k)) for k in cols] + [str(g["n"]), _status_text(g["statuses"])]
            + [cell(g, k) for k in TABLE_STATS] for g in groups]
    return md_table(header, rows)


def runs_table(runs: list[dict], cols: list[str]) -> str:
    stats = ["best_val_acc", "final_val_acc", "final_val_loss", "steps", "tv_per_epoch", "max_rise_rel", "n_rises"]
    header = ["run", "status", "seed"] + cols + [TABLE_STATS.get(k, k) for k in stats]
    rows = [[r["path"], r["status"], fmt(r["seed"])] + [fmt(r["hparams"].get(k)) for k in cols]
            + [fmt(value(r, k)) for k in stats] for r in runs]
    return md_table(header, rows)


def write_csvs(runs: list[dict], groups: list[dict], keys: list[str], out: Path) -> None:
    """runs.csv: every run (swept keys, metrics, oscillation figures, then the other hparams); configs.csv: seed stats."""
    osc_keys = list(dict.fromkeys(k for r in runs for k in r["osc"]))
    hp_keys = keys + sorted({k for r in runs for k in r["hparams"]} - set(keys) - {"seed"})
    # summary's "epochs" (done) would clash with the hparam "epochs" (scheduled)
    header = (["path", "status", "seed"] + hp_keys[:len(keys)] + [CSV_NAMES.get(k, k) for k in METRICS] + osc_keys
              + hp_keys[len(keys):])
    with open(out / "runs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in runs:
            hp = [r["hparams"].get(k) for k in hp_keys]
            w.writerow([r["path"], r["status"], r["seed"]] + hp[:len(keys)] + [r.get(k) for k in METRICS]
                       + [r["osc"].get(k) for k in osc_keys] + hp[len(keys):])
    with open(out / "configs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(keys + ["n", "runs"] + [f"{k}_{s}" for k in STATS for s in ("mean", "std")])
        for g in groups:
            w.writerow([g["hparams"].get(k) for k in keys] + [g["n"], _status_text(g["statuses"])]
                       + [x for k in STATS for x in g["stats"][k]])


# ---------------------------------------------------------------- the command

def build_report(runs: list[dict], out: Path, root: Path, x: str = "lr", y: str = "wd") -> str:
    """Write report.md, runs.csv, configs.csv and the figures into out; return the markdown tables."""
    from runner.figures import (heatmap_grid, oscillation_series, plot_heatmap, plot_oscillation, plot_val_curves,
                                plot_weight_norm)

    keys = varying_keys(runs)
    groups = group_configs(runs, keys)
    cols = id_keys(runs, keys)
    counts = _status_text(Counter(r["status"] for r in runs))
    tables = (f"{len(runs)} runs ({counts}) in {len(groups)} configurations; swept: {', '.join(keys) or 'nothing'}.\n"
              f"Configuration statistics: mean ± sample std over completed runs (n).\n\n"
              f"## Configurations\n\n{config_table(groups, cols)}\n\n## Runs\n\n{runs_table(runs, cols)}\n")
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(runs, groups, keys, out)
    figures = [("val_curves.png", "validation loss and accuracy", lambda p: plot_val_curves(groups, p)),
               ("weight_norm.png", "weight norm", lambda p: plot_weight_norm(groups, p)),
               ("heatmap.png", "best validation accuracy", lambda p: plot_heatmap(heatmap_grid(groups, keys, x, y), p)),
               ("oscillation.png", "oscillation vs decay strength",
                lambda p: plot_oscillation(oscillation_series(groups, keys), p))]
    lines = []
    for name, title, draw in figures:
        try:
            why = draw(out / name)
        except Exception as e:  # a figure is a bonus: never lose the tables over one
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if why:
            (out / name).unlink(missing_ok=True)  # no stale figure from an earlier report
        lines.append(f"- {name} skipped: {why}" if why else f"### {title}\n\n![{title}]({name})\n")
    md = f"# Report: {root}\n\n{tables}\n## Figures\n\n" + "\n".join(lines) + "\n"
    (out / "report.md").write_text(md, encoding="utf-8")
    return tables


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.report", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("dir", help="a run folder, a sweep folder, or any folder above them")
    p.add_argument("--out", help="where report.md, runs.csv and the figures go (default DIR/report)")
    p.add_argument("--x", default="lr", help="heat map x key (default lr)")
    p.add_argument("--y", default="wd", help="heat map y key (default wd)")
    p.add_argument("--threshold", type=float, default=None,
                   help="relative rise that counts as an oscillation episode (default 0.1, or what the summary used)")
    args = p.parse_args(argv)
    if args.threshold is not None and not args.threshold > 0:
        p.error(f"--threshold must be > 0, got {args.threshold}")
    root = Path(args.dir)
    if not root.is_dir():
        print(f"runner.report: error: no such folder: {root}", file=sys.stderr)
        return 2
    runs = collect_runs(root, args.threshold)
    if not runs:
        print(f"runner.report: error: no runs (summary.json, metrics.jsonl or .hydra/config.yaml) under {root}",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else root / "report"
    try:
        tables = build_report(runs, out, root, args.x, args.y)
    except OSError as e:
        print(f"runner.report: error: cannot write the report to {out}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'report.md'}, runs.csv, configs.csv and figures", file=sys.stderr)
    try:
        print(tables, flush=True)
    except BrokenPipeError:  # `| head` stopped reading; the files are written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
