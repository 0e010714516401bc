"""`python -m runner.analysis.report DIR`: a leaderboard, tables and figures of every run under DIR.

DIR is a run folder, a sweep folder (multirun/DATE/TIME_x/) or any folder above them;
analysis.runs finds the runs and groups them into configurations (seeds averaged). This module
writes OUT/report.md (a verdict on the chain from decay to the oscillation first when the runs
measured it, analysis.verdict; then the leaderboard, what its names mean, the full tables, the
chain link by link and the figures), with analysis.tables the tables, runs.csv and configs.csv,
and with analysis.figures the PNG figures (OUT/*.png, one loss figure per run in OUT/runs/). The
console gets the short ranking and where the rest is.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from runner.analysis.chain import chain_fits
from runner.analysis.chain_figure import chain_points, plot_chain
from runner.analysis.figures import (
    LAMBDA,
    decay_axis,
    heatmap_grid,
    oscillation_series,
    plot_heatmap,
    plot_oscillation,
    plot_run_losses,
    plot_staleness,
    plot_val_curves,
    plot_weight_norm,
    staleness_points,
)
from runner.analysis.runs import collect_runs, group_configs, varying_keys
from runner.analysis.tables import (
    config_table,
    headline_name,
    id_keys,
    leaderboard,
    leaderboard_intro,
    notes_list,
    runs_table,
    selected_words,
    staleness_table,
    status_text,
    terms_section,
    write_csvs,
)
from runner.analysis.verdict import chain_section, verdict_section
from runner.analysis.words import (
    CONFIGURATIONS_NOTE,
    EVALUATION_WORDS,
    FIGURE_WORDS,
    FREQUENCY_NOTE,
    plural,
)

RUN_FILES = "summary.json, metrics.jsonl or .hydra/config.yaml"  # what makes a folder a run's
MAX_RUN_FIGURES = 64  # one loss figure per run up to this many: more is a folder nobody opens
MAX_CONSOLE_ROWS = 20  # the console's ranking; report.md has every configuration


def shown_root(root: Path) -> str:
    """The report's folder as people see it: a link (outputs/latest) resolved, relative to the
    current folder when below it, else its last three parts (multirun/DATE/TIME_x)."""
    path = Path(root).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return "/".join(path.parts[-3:])


def _distinct(runs: list[dict], get) -> list[str]:
    return sorted({str(v) for r in runs if (v := get(r)) not in (None, "")})


def context(runs: list[dict], root: Path) -> str:
    """What the report is of, for every title: the sweep (the folder holding all its runs), the
    runs' names (name=...) when the folder does not show them, the model(s) and the data (its
    images)."""
    models = _distinct(runs, lambda r: r["hparams"].get("model.name"))
    data = _distinct(runs, lambda r: r["hparams"].get("data.name"))
    sizes = _distinct(runs, _images)
    below = os.path.commonpath([r["path"] for r in runs]) if len(runs) > 1 else ""
    folder = shown_root(Path(root) / below)
    shows = lambda n: any(part.endswith(f"_{n}") for part in Path(folder).parts)  # TIME_id_NAME
    names = [n for n in _distinct(runs, lambda r: r.get("name")) if not shows(n)]
    parts = [folder, *([", ".join(names)] if names else [])]
    parts.append(", ".join(models) or "model not recorded")
    images = f" ({'; '.join(sizes)})" if sizes else ""
    parts.append(", ".join(data) + images if data else "data not recorded")
    return " · ".join(parts)


def _images(run: dict) -> str | None:
    n_train, n_val = run["data"].get("n_train"), run["data"].get("n_val")
    return f"{n_train:,} train / {n_val:,} val images" if n_train and n_val else None


def figures(runs: list[dict], groups: list[dict], keys: list[str], axes: tuple, title: str) -> list:
    """(file, draw(path) → None or why it was skipped) of every figure of the report."""
    evaluation = EVALUATION_WORDS[headline_name(runs)]
    grid = lambda: heatmap_grid(groups, keys, *axes)
    series, lam = oscillation_series(groups, keys), decay_axis(groups, keys) or LAMBDA
    words = f"best val acc ({evaluation}, {selected_words(runs)})"
    return [
        ("val_curves.png", lambda p: plot_val_curves(groups, p, evaluation, title)),
        ("weight_norm.png", lambda p: plot_weight_norm(groups, p, title)),
        ("heatmap.png", lambda p: plot_heatmap(grid(), p, title, words)),
        ("oscillation.png", lambda p: plot_oscillation(series, p, title=title, lam_key=lam)),
        ("staleness.png", lambda p: plot_staleness(staleness_points(groups), p, title)),
        ("chain.png", lambda p: plot_chain(chain_points(runs), p, title)),
    ]


def build_report(runs: list[dict], out: Path, root: Path, x: str = "lr", y: str = "wd") -> str:
    """Write report.md, runs.csv, configs.csv and the figures into out; return what the console
    shows."""
    keys = varying_keys(runs)
    groups = group_configs(runs, keys)
    cols = id_keys(runs, keys)
    title = context(runs, root)
    counts = f"{plural(len(runs), 'run')} ({status_text(Counter(r['status'] for r in runs))})"
    swept = ", ".join(keys) or "nothing"
    what = f"{counts} in {plural(len(groups), 'configuration')}; swept: {swept}"
    full, every = config_table(groups, cols), runs_table(runs, cols)
    stale = staleness_table(groups, cols)
    fits = chain_fits(runs)
    chain = chain_section(fits, groups)
    headers = _headers("\n".join([full, every, stale]))
    out.mkdir(parents=True, exist_ok=True)
    unlink_links(out)
    write_csvs(runs, groups, keys, out)
    drawn = []
    for name, draw in figures(runs, groups, keys, (x, y), title):
        why = _draw(draw, out / name)
        heading, how = FIGURE_WORDS[name]
        shown = f"### {heading}\n\n{how}\n\n![{heading}]({name})\n"
        drawn.append(f"- {name} skipped: {why}" if why else shown)
    md = "\n".join(
        [
            f"# Report: {shown_root(root)}\n\n{title}. {what}.\n",
            *(part for part in (verdict_section(fits),) if part),
            f"## Leaderboard\n\n{leaderboard_intro(runs, groups)}\n\n{leaderboard(groups)}\n",
            terms_section(headers),
            f"## Configurations\n\n{CONFIGURATIONS_NOTE} {FREQUENCY_NOTE}\n",
            f"{full}\n\n## Runs\n\n{every}\n",
            *(part for part in (stale, chain, notes_list(runs)) if part),
            "## Figures\n\n" + "\n".join(drawn),
            run_figures(runs, out, title),
        ]
    )
    (out / "report.md").write_text(md, encoding="utf-8")
    return console(runs, groups, what, root, out)


def unlink_links(out: Path) -> None:
    """Remove the links in `out` and `out/runs` (the report makes none): a report folder received
    with the runs may hold links planted where report.md, a CSV or a figure is written, which
    would send those writes wherever they point."""
    for folder in (out, out / "runs"):
        if folder.is_symlink():
            folder.unlink()
        elif folder.is_dir():
            for p in folder.iterdir():
                if p.is_symlink():
                    p.unlink()


def _headers(md: str) -> list[str]:
    """The column names of every markdown table in `md` (each line above a |---| line)."""
    lines = md.splitlines()
    above = [a for a, b in zip(lines, lines[1:]) if b.startswith("|---")]
    return [h.strip() for a in above for h in a.strip("| ").split(" | ")]


def console(runs: list[dict], groups: list[dict], what: str, root: Path, out: Path) -> str:
    """The console's few lines: what was found, the ranking, any notes, and where everything else
    is."""
    first = f"{Path(root).resolve().name}: {what}"
    evaluation = EVALUATION_WORDS[headline_name(runs)]
    how = f"best val acc ({evaluation}, {selected_words(runs)}), mean [95 % interval] over n:"
    ranking = leaderboard(groups, full=False, limit=MAX_CONSOLE_ROWS)
    notes = notes_list(runs)
    tail = f"Every run, every figure and what the names mean: {out / 'report.md'}"
    return "\n\n".join([f"{first}\n{how}", ranking, *([notes.strip()] if notes else []), tail])


def _draw(draw, path: Path) -> str | None:
    """draw(path), or the one-line reason it drew nothing; a skipped figure leaves no stale file
    behind."""
    try:
        why = draw(path)
    except Exception as e:  # a figure is a bonus: never lose the tables over one
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if why:
        path.unlink(missing_ok=True)  # no stale figure from an earlier report
    return why


def run_figure_name(path: str) -> str:
    """Where a run's loss figure goes, relative to OUT: runs/<run path with / as __>.png (one flat
    folder)."""
    return "runs/" + path.replace("/", "__") + ".png"


def run_figures(runs: list[dict], out: Path, title: str = "") -> str:
    """Draw each run's loss figure (the first MAX_RUN_FIGURES runs in path order); return
    report.md's section."""
    (out / "runs").mkdir(exist_ok=True)
    lines = []
    for r in runs[:MAX_RUN_FIGURES]:
        name = run_figure_name(r["path"])
        why = _draw(lambda p: plot_run_losses(r, p, title), out / name)
        lines.append(f"- {r['path']} skipped: {why}" if why else f"- [{r['path']}]({name})")
    if len(runs) > MAX_RUN_FIGURES:
        rest = len(runs) - MAX_RUN_FIGURES
        lines.append(f"- capped at {MAX_RUN_FIGURES} runs: the other {rest} have no loss figure")
    return (
        "## Losses per run\n\nTraining loss in train mode (mean since the previous validation), "
        "eval-mode loss on training images, validation loss with BatchNorm running statistics and "
        "recalibrated (dashed).\n\n" + "\n".join(lines) + "\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m runner.analysis.report",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    p.add_argument("dir", help="a run folder, a sweep folder, or any folder above them")
    out_help = "where report.md, runs.csv and the figures go (default: DIR/report)"
    p.add_argument("--out", help=out_help)
    p.add_argument("--x", default="lr", help="heat map x key (default lr)")
    p.add_argument("--y", default="wd", help="heat map y key (default wd)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="relative rise that counts as an oscillation episode (default 0.1, or the summary's)",
    )
    args = p.parse_args(argv)
    if args.threshold is not None and not args.threshold > 0:
        p.error(f"--threshold must be > 0, got {args.threshold}")
    root = Path(args.dir)
    if not root.is_dir():
        print(f"runner.analysis.report: error: no such folder: {root}", file=sys.stderr)
        return 2
    runs = collect_runs(root, args.threshold)
    if not runs:
        print(
            f"runner.analysis.report: error: no runs ({RUN_FILES}) under {root}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out) if args.out else root / "report"
    if not args.out and out.is_symlink():  # DIR/report, received with the runs, pointing elsewhere
        where = f"{out} is a symbolic link (to {os.readlink(out)}): remove it, or give --out"
        print(f"runner.analysis.report: error: {where}", file=sys.stderr)
        return 2
    try:
        text = build_report(runs, out, root, args.x, args.y)
    except OSError as e:
        where = f"cannot write the report to {out}: {e}"
        print(f"runner.analysis.report: error: {where}", file=sys.stderr)
        return 1
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `| head` stopped reading; the files are written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
