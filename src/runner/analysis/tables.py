"""The report's tables: the leaderboard, every configuration, every run, BatchNorm staleness
(markdown for report.md and the console), and runs.csv and configs.csv.

Configurations come from analysis.runs.group_configs; the columns' names and what they mean from
analysis.words.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from runner.analysis.runs import ID_KEYS, METRICS, STATS, accuracy_noise, finite_number, fmt, value
from runner.analysis.words import (
    ALWAYS_TERMS,
    CHOSEN,
    EVALUATION_WORDS,
    SELECTED_WORDS,
    STALENESS_NOTE,
    STALENESS_STATS,
    TABLE_STATS,
    TERMS,
    plural,
)

# the columns of the runs' headline evaluation
HEADLINE_STATS = ("best_val_acc", "final_val_acc", "final_val_loss", "epochs_to_92")
RUNS_TABLE_STATS = [
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "test_acc_selected",
    "steps",
    "val_every_steps",
    "dispersion",
    "dispersion_recal",
    "dispersion_bias",
    "gap_share",
    "tv_per_epoch",
    "tv_per_epoch_recal",
    "recal_removed_share",
    "max_rise_rel",
    "n_rises",
]
CSV_NAMES = {"epochs": "epochs_done"}


def status_text(counts: Counter) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def headline_name(runs: list[dict]) -> str:
    """Which evaluation the headline columns are: recal or running when every run agrees
    (summary.json's val_metric), else headline (each run its own: runs.csv's val_metric column says
    which)."""
    validated = [r for r in runs if r["val"]] or runs  # a run yet to validate has no headline yet
    names = {r.get("val_metric") for r in validated}
    only = names.pop() if len(names) == 1 else None
    return {"recalibrated": "recal", "running": "running"}.get(only, "headline")


def selected_words(runs: list[dict]) -> str:
    """Which images chose each run's best validation (engine.selection)."""
    on = {r.get("selected_on") for r in runs}
    if len(on) == 1 and on <= SELECTED_WORDS.keys():
        return SELECTED_WORDS[next(iter(on))]
    return "selected on test or a held-out split (runs.csv: selected_on)"


def label(key: str, runs: list[dict]) -> str:
    """A table column's header: headline columns say which evaluation they are, and the best
    accuracy says which images chose it when the test split did (a run without data.val_split:
    engine.selection)."""
    text = TABLE_STATS.get(key, key)
    on_test = key == "best_val_acc" and any(r.get("selected_on") == "test" for r in runs)
    if key not in HEADLINE_STATS:
        return text
    return f"{text} ({headline_name(runs)}{', selected on test' if on_test else ''})"


def terms_section(headers: list[str]) -> str:
    """report.md's "What the names mean": the terms every report uses, then those of the columns it
    shows."""
    used = {h.split(" (", 1)[0] for h in headers}
    names = [t for t in TERMS if t in ALWAYS_TERMS or t in used]
    return "## What the names mean\n\n" + "\n".join(f"- **{t}**: {TERMS[t]}." for t in names) + "\n"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, row)) + " |" for row in rows])


def id_keys(runs: list[dict], keys: list[str]) -> list[str]:
    present = [k for k in ID_KEYS if any(k in r["hparams"] for r in runs)]
    return present + [k for k in keys if k not in present]


def shown_stats(stats, value_of) -> list[str]:
    """The columns of `stats` that hold a value somewhere (value_of(key) → the column's values): a
    column of dashes says nothing."""
    return [k for k in stats if any(v is not None for v in value_of(k))]


def ci_text(ci: dict, digits: int = 3) -> str:
    """A mean with its 95 % interval as people read it: 0.912 [0.905, 0.919] (the interval only
    with two or more runs; analysis.stats.mean_ci)."""
    if ci["mean"] is None:
        return "-"
    text = f"{ci['mean']:.{digits}f}"
    return text if ci["lo"] is None else f"{text} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def ci_fmt(ci: dict) -> str:
    """ci_text with 4 significant digits (runner.analysis.runs.fmt) for figures of any scale."""
    if ci["mean"] is None:
        return "-"
    text = fmt(ci["mean"])
    return text if ci["lo"] is None else f"{text} [{fmt(ci['lo'], 3)}, {fmt(ci['hi'], 3)}]"


def n_text(g: dict) -> str:
    """n, then the runs that did not complete: `2`, `0 (1 diverged)`."""
    others = Counter({s: n for s, n in g["statuses"].items() if s != "completed"})
    return f"{g['n']}" + (f" ({status_text(others)})" if others else "")


def config_label(g: dict) -> str:
    """A configuration by the keys that tell it apart, or by its study keys when it is alone."""
    if g["values"]:
        return g["label"]
    own = [f"{k}={fmt(g['hparams'][k])}" for k in ID_KEYS if k in g["hparams"]]
    return ", ".join(own) or "all runs"


def ranked(groups: list[dict]) -> list[dict]:
    """Configurations by mean best_val_acc, best first; those without a completed run last."""
    key = lambda g: (g["stats"]["best_val_acc"][0] is None, -(g["stats"]["best_val_acc"][0] or 0.0))
    return sorted(groups, key=key)


def leaderboard(groups: list[dict], full: bool = True, limit: int | None = None) -> str:
    """The ranking: #, configuration, best val acc (mean ± std), n; `full` adds the final accuracy
    and, for runs that held out a split, the test accuracy of the checkpoint it chose."""
    extra = [k for k in ("final_val_acc", "test_acc_selected") if full]
    extra = [k for k in extra if any(g["stats"].get(k, (None,))[0] is not None for g in groups)]
    header = ["#", "configuration", "best val acc", *(TABLE_STATS[k] for k in extra), "n"]
    rows, order = [], ranked(groups)
    for i, g in enumerate(order[:limit], start=1):
        rank = str(i) if g["stats"]["best_val_acc"][0] is not None else "-"
        cells = [ci_text(g["ci"][k]) for k in ["best_val_acc", *extra]]
        rows.append([rank, config_label(g), *cells, n_text(g)])
    table = md_table(header, rows)
    more = len(order) - len(rows)
    return table + (f"\n\n… and {plural(more, 'more configuration')} in report.md" if more else "")


def leaderboard_intro(runs: list[dict], groups: list[dict]) -> str:
    """What the leaderboard's numbers are, and how far apart they can be by chance."""
    on = {r.get("selected_on") for r in runs}
    chosen = (
        CHOSEN[next(iter(on))]
        if len(on) == 1 and on <= CHOSEN.keys()
        else ("selected on the test split or a held-out split (runs.csv: selected_on)")
    )
    noise = accuracy_noise(groups)
    chance = (
        ""
        if noise is None
        else (
            f" Differences below about {noise:.3f} (the seeds' typical spread or the standard "
            f"error of an accuracy on the validation images, whichever is larger) can be chance "
            f"alone."
        )
    )
    return (
        f"Best validation accuracy per configuration ({EVALUATION_WORDS[headline_name(runs)]}), "
        f"the mean over its completed runs (n) with its 95 % interval in brackets (Student t; "
        f"none for one run), ranked by the mean; {chosen}.{chance}"
    )


def config_table(groups: list[dict], cols: list[str]) -> str:
    runs = [r for g in groups for r in g["runs"]]
    stats = shown_stats(TABLE_STATS, lambda k: [g["stats"].get(k, (None,))[0] for g in groups])
    header = cols + ["n"] + [label(k, runs) for k in stats]
    rows = [
        [fmt(g["hparams"].get(k)) for k in cols] + [n_text(g)] + [ci_fmt(g["ci"][k]) for k in stats]
        for g in groups
    ]
    return md_table(header, rows)


def runs_table(runs: list[dict], cols: list[str]) -> str:
    """Every run: its folder, its name and tags (name=..., tags=[...]) when any run has them, its
    status, seed, keys and figures."""
    stats = shown_stats(RUNS_TABLE_STATS, lambda k: [value(r, k) for r in runs])
    named = [k for k in ("name", "tags") if any(r.get(k) for r in runs)]
    header = ["run", *named, "status", "seed"] + cols + [label(k, runs) for k in stats]
    rows = [
        [r["path"], *(run_label(r.get(k)) for k in named), r["status"], fmt(r["seed"])]
        + [fmt(r["hparams"].get(k)) for k in cols]
        + [fmt(value(r, k)) for k in stats]
        for r in runs
    ]
    return md_table(header, rows)


def run_label(v) -> str:
    """A run's name or tags as table text: tags comma-separated, "-" for none."""
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "-"
    return fmt(v)


def natural_axis(g: dict) -> str:
    """Where a configuration sits on its optimizer's own axis: τ/T for decoupled decay, with Wang &
    Aitchison's τ in epochs beside it; λ₂ for L2 alone."""
    tau, l2 = g["stats"]["tau_fraction"][0], finite_number(g["hparams"].get("l2"))
    wa = g["stats"]["tau_epoch_wa"][0]
    if tau is not None:
        return f"τ/T={fmt(tau, 3)}" + ("" if wa is None else f" (W&A τ {fmt(wa, 2)} ep)")
    return f"λ₂={fmt(l2)}" if l2 else "-"


def staleness_table(groups: list[dict], cols: list[str]) -> str:
    """How much of each configuration's oscillation is BatchNorm staleness, next to its angular
    update; empty when no run recorded staleness
    (docs/reports.md#batchnorm-staleness-and-rotational-equilibrium)."""
    if not any(g["stats"]["bn_staleness_mu"][0] is not None for g in groups):
        return ""
    header = cols + ["n", "decay timescale"] + list(STALENESS_STATS.values())
    rows = [
        [fmt(g["hparams"].get(k)) for k in cols]
        + [n_text(g), natural_axis(g)]
        + [ci_fmt(g["ci"][k]) for k in STALENESS_STATS]
        for g in groups
    ]
    return "## BatchNorm staleness\n\n" + STALENESS_NOTE + "\n\n" + md_table(header, rows) + "\n"


def notes_list(runs: list[dict]) -> str:
    """One line per remark of a run (a config that could not be resolved, ...); empty when there are
    none."""
    lines = [f"- {r['path']}: {note}" for r in runs for note in r.get("notes", [])]
    return "## Notes\n\n" + "\n".join(lines) + "\n" if lines else ""


# a cell a spreadsheet would run as a formula (=HYPERLINK(...), +cmd, -2+3, @SUM, a tab or return
# first); OWASP's advice: a quote in front makes it text
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """`value` as a CSV cell that a spreadsheet shows as text, never runs: a string that starts
    like a formula gets a ' in front (numbers stay numbers)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def _row(values: list) -> list:
    return [csv_cell(v) for v in values]


def write_csvs(runs: list[dict], groups: list[dict], keys: list[str], out: Path) -> None:
    """runs.csv: every run (swept keys, metrics, oscillation figures, then the other hparams);
    configs.csv: seed statistics per configuration."""
    osc_keys = list(dict.fromkeys(k for r in runs for k in r["osc"]))
    hp_keys = keys + sorted({k for r in runs for k in r["hparams"]} - set(keys) - {"seed"})
    # summary's "epochs" (done) would clash with the hparam "epochs" (scheduled)
    header = (
        ["path", "status", "seed"]
        + hp_keys[: len(keys)]
        + [CSV_NAMES.get(k, k) for k in METRICS]
        + ["val_metric", "selected_on"]
        + osc_keys
        + hp_keys[len(keys) :]
        + ["notes"]
    )
    with open(out / "runs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(_row(header))
        for r in runs:
            hp = [r["hparams"].get(k) for k in hp_keys]
            w.writerow(
                _row(
                    [r["path"], r["status"], r["seed"]]
                    + hp[: len(keys)]
                    + [r.get(k) for k in METRICS]
                    + [r.get("val_metric"), r.get("selected_on")]
                    + [r["osc"].get(k) for k in osc_keys]
                    + hp[len(keys) :]
                    + ["; ".join(r.get("notes", []))]
                )
            )
    with open(out / "configs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        stats = [f"{k}_{s}" for k in STATS for s in ("mean", "std")]
        w.writerow(_row(keys + ["n", "runs"] + stats))
        for g in groups:
            w.writerow(
                _row(
                    [g["hparams"].get(k) for k in keys]
                    + [g["n"], status_text(g["statuses"])]
                    + [x for k in STATS for x in g["stats"][k]]
                )
            )
