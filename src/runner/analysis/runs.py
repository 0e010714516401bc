"""Reading run folders and grouping them into configurations: the data behind analysis.report and
.figures.

A run folder is one that holds summary.json, metrics.jsonl or .hydra/config.yaml. Its status comes
from summary.json, else "running" (metrics.jsonl only: still going, or killed) or "not started"
(.hydra only).

A run's configuration is its flattened hparams (`optimizer.name`, `lr`, ...) without `seed` and the
keys in NOT_CONFIG; runs that differ only in seed form one configuration, summarized as mean ±
sample std over its completed runs (n), and as mean with its 95 % interval (analysis.stats).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections import Counter
from pathlib import Path

from runner import saved_config
from runner.analysis.equilibrium import equilibrium_block
from runner.analysis.oscillation import headline_points, oscillation_block, val_points
from runner.analysis.stats import mean_ci
from runner.config import flatten, non_training_keys
from runner.core.headline import Headline
from runner.engine import files
from runner.engine.files import read_regular

MAX_SUMMARY_BYTES = 64 << 20  # a summary.json is a few kB
MAX_METRICS_BYTES = 4 << 30  # a metrics.jsonl of a long run: hundreds of MB

# keys that do not split runs into configurations: the seed (runs that differ only in it are
# replicates) and every setting the schema marks as not changing what is trained
NOT_CONFIG = {"seed", *non_training_keys()}
# always shown, in this order, before other swept keys
ID_KEYS = [
    "optimizer.name",
    "lr",
    "wd",
    "l2",
]
METRICS = [
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "final_train_loss",
    "steps",
    "epochs",
    "wall_time_s",
    "images_per_s",
    # runs with data.val_split: the test split's accuracy of best.pt and of the final weights
    "test_acc_selected",
    "test_acc_final",
]
# what a configuration reports as mean ± std and mean with its 95 % interval over its completed
# seeds (a mean of per-seed recal_removed_share)
STATS = [
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "dispersion",
    "dispersion_recal",
    "dispersion_bias",
    "gap_share",
    "acc_dispersion",
    "acc_dispersion_recal",
    "acc_sampling_error",
    "val_every_steps",
    "tv_per_epoch",
    "max_rise_rel",
    "n_rises",
    "roughness_ratio_mid",
    "roughness_ratio_last",
    "epochs_to_90",
    "epochs_to_92",
    "gen_gap",
    "final_weight_norm",
    "tv_per_epoch_recal",
    "max_rise_rel_recal",
    "n_rises_recal",
    "roughness_ratio_mid_recal",
    "roughness_ratio_last_recal",
    "recal_removed_share",
    "bn_staleness_mu",
    "bn_lag_mu",
    "bn_mismatch_mu",
    "gap_loss_mean",
    "gap_lag_mean",
    "gap_mismatch_mean",
    "angular_update_step_mid",
    "angular_update_step_pred_mid",
    "angular_diffusion_mid",
    "angular_diffusion_pred_mid",
    "tau_fraction",
    "tau_epoch_wa",
    "test_acc_selected",
    "test_acc_final",
]


def finite_number(x):
    """x itself (int stays int) when it is a finite int or float, else None (bools, strings, null,
    NaN, inf)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return x if math.isfinite(x) else None


def fmt(v, digits: int = 4) -> str:
    """A value as table text: floats to `digits` significant digits, None as "-"."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


# ---------------------------------------------------------------- reading runs


def _read_json(path: Path):
    try:
        return json.loads(read_regular(path, MAX_SUMMARY_BYTES, nofollow=True))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    """The records of a metrics.jsonl that is a regular file (not a link) of at most
    MAX_METRICS_BYTES; [] otherwise."""
    try:
        data = read_regular(path, MAX_METRICS_BYTES, nofollow=True)
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a half-written line, or bytes that are not UTF-8 JSON
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_saved_config(path: Path) -> tuple[dict | None, str | None]:
    """(config, note) from a run's .hydra/config.yaml, read by runner.saved_config: within its
    limits, with only the runner's own interpolations resolved.

    Hydra saves the config unresolved (`wd: ${reg_or:${reg},5.0e-4}`); a run that never wrote
    summary.json has nothing else to say what it trains, so its `wd` must be resolved to compare
    with finished runs. A value that uses another resolver (`${oc.env:...}`: an environment value
    has no place in a report people share) or whose reference does not resolve keeps its text and
    is named in the note. (None, None) when there is no file; (None, note) when it cannot be
    read."""
    if files.kind(path) is None:
        return None, None
    where = f"{path.parent.name}/{path.name}"
    if files.kind(path) != "file":
        return None, f"{where} unreadable: not a plain file"
    try:
        out, kept = saved_config.runner_resolved(saved_config.load(path))
    except saved_config.NotAMapping:
        return None, f"{where} is not a mapping"
    except saved_config.SavedConfigError as e:  # the run has no hparams, the report goes on
        return None, f"{where} unreadable: {e}"
    note = f"could not resolve {', '.join(kept)} in {where}: shown unresolved" if kept else None
    return out, note


def flatten_hparams(d: dict) -> dict:
    """runner.config.flatten (dotted keys), with lists as compact JSON strings so they compare and
    print as one value: {"optimizer": {"betas": [0.9, 0.999]}} → {"optimizer.betas": "[0.9,0.999]"}.
    """
    return {
        k: json.dumps(v, separators=(",", ":")) if isinstance(v, (list, tuple)) else v
        for k, v in flatten(d).items()
    }


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


LOSS_CURVES = ("train_loss", "train_eval_loss_running", "val_loss_running", "val_loss_recal")


def loss_curves(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """A run's four losses at its validation points, each a list of (epoch, loss):

        train_loss       mean `train_loss` (train mode, augmented batches) over the steps since
                         the previous validation point (after the previous validation step, up to
                         and including this one)
        train_eval_loss_running
                         eval-mode loss on the fixed training subset (running BatchNorm statistics)
        val_loss_running validation loss with running BatchNorm statistics
        val_loss_recal   validation loss with BatchNorm statistics recomputed on training images

    A curve the run did not record is empty; each stops where runner.analysis.oscillation.val_points
    stops its series.
    """
    running, recal = val_points(records), val_points(records, recal=True)
    train = {}  # step → train_loss (a re-logged step: the later record)
    for r in records:
        if isinstance(r, dict) and "val_loss" not in r and "train_loss" in r:
            if finite_number(r.get("step")) is not None:
                train[r["step"]] = finite_number(r["train_loss"])
    train_steps, i, means = sorted(train), 0, []
    for step, epoch in sorted({(p["step"], p["epoch"]) for p in running + recal}):
        window = []
        # the steps since the previous validation point
        while i < len(train_steps) and train_steps[i] <= step:
            loss = train[train_steps[i]]
            if loss is not None:
                window.append(loss)
            i += 1
        if window:
            means.append((epoch, statistics.fmean(window)))
    return {
        "train_loss": means,
        "train_eval_loss_running": [
            (p["epoch"], p["train_eval"]) for p in running if p["train_eval"] is not None
        ],
        "val_loss_running": [(p["epoch"], p["loss"]) for p in running],
        "val_loss_recal": [(p["epoch"], p["loss"]) for p in recal],
    }


def headline_metrics(summary: dict | None, records: list[dict]) -> dict:
    """METRICS from summary.json, or from the records where it lacks them; without summary.json the
    headline follows its rule (core.headline): the recalibrated evaluation when the run has one."""
    head = headline_points(records)
    accs = [p["acc"] for p in head if p["acc"] is not None]
    steps = [r["step"] for r in records if finite_number(r.get("step")) is not None]
    epochs = [r["epoch"] for r in records if finite_number(r.get("epoch")) is not None]
    from_records = {
        "best_val_acc": max(accs, default=None),
        "steps": max(steps, default=None),
        "final_val_acc": head[-1]["acc"] if head else None,
        "final_val_loss": head[-1]["loss"] if head else None,
        "epochs": max(epochs, default=None),
    }
    return {
        k: finite_number(summary.get(k)) if summary and k in summary else from_records.get(k)
        for k in METRICS
    }


def load_run(d: Path, root: Path, threshold: float | None = None) -> dict:
    """One run: status, flattened hparams, headline metrics, oscillation block, curves for the
    figures (`val`, `wnorm`, `losses`: see loss_curves), and notes (a list of one-line remarks on
    what could not be read)."""
    summary = _read_json(d / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    records = _read_jsonl(d / "metrics.jsonl")
    notes = (
        ["summary.json unreadable: status and metrics from the other files"]
        if (summary is None and (d / "summary.json").is_file())
        else []
    )
    hp = (summary or {}).get("hparams")
    if not isinstance(hp, dict):
        hp, note = read_saved_config(d / ".hydra" / "config.yaml")
        notes += [note] if note else []
    hp = hp if isinstance(hp, dict) else {}
    named = {"name": hp.get("name"), "tags": hp.get("tags") or []}  # name=..., tags=[...]
    hp = applied_hparams(flatten_hparams(hp), summary)
    if summary:
        status = summary.get("status") or "unknown"
    else:
        status = "running" if (d / "metrics.jsonl").is_file() else "not started"

    metrics = headline_metrics(summary, records)
    n_val = finite_number(((summary or {}).get("data") or {}).get("n_val"))
    epochs = finite_number(hp.get("epochs"))
    osc = oscillation_block(records, epochs, 0.1 if threshold is None else threshold, n_val=n_val)

    rel = d.relative_to(root).as_posix()
    pts = headline_points(records)  # `val`: the headline series, as best/final_val_acc
    wnorm = sorted(
        (r["epoch"], r["weight_norm"])
        for r in records
        if finite_number(r.get("epoch")) is not None
        and finite_number(r.get("weight_norm")) is not None
    )
    return {
        "path": root.resolve().name if rel == "." else rel,  # outputs/latest: the run it points at
        "status": status,
        **named,
        "seed": hp.get("seed"),
        "hparams": hp,
        **metrics,
        "data": (summary or {}).get("data") or {},  # name, root, n_train, n_val, fingerprint
        "val_metric": (summary or {}).get("val_metric") or Headline.of_records(records).name,
        "selected_on": (summary or {}).get("selected_on")
        or ("val_split" if hp.get("data.val_split") else "test"),
        "osc": osc,
        "eq": equilibrium_of(summary, records, epochs),
        "val": [(p["epoch"], p["loss"], p["acc"]) for p in pts],
        "wnorm": wnorm,
        "losses": loss_curves(records),
        "timescale": (summary or {}).get("timescale") or {},
        "chain_records": chain_records(records),
        "notes": notes,
    }


def equilibrium_of(summary: dict | None, records: list[dict], epochs: float | None) -> dict:
    """The middle-third equilibrium figures of the records (analysis.equilibrium) and the plan's
    decay timescale from summary.json (tau_steps, tau_fraction: none without a summary)."""
    tau = (summary or {}).get("timescale")
    return {**(tau if isinstance(tau, dict) else {}), **equilibrium_block(records, epochs)}


def applied_hparams(hp: dict, summary: dict | None) -> dict:
    """The flattened hparams with `wd` and `l2` the λ and λ₂ the step plan applied (summary.json's
    `applied`: optimizer.wd_tau and wd_normalized set λ from other settings), where known."""
    applied = (summary or {}).get("applied")
    if isinstance(applied, dict):
        hp.update({k: v for k, v in applied.items() if k in ("wd", "l2")})
    return hp


CHAIN_KEYS = ("angular_update_step", "bn_lag_rms", "bn_drift_mu", "val_loss_shadow")


def chain_records(records: list[dict]) -> list[dict]:
    """The records analysis.chain reads: log points with the per-step angle, validations with the
    shadow sets' lags (runner.probes.rotation, .shadow_bn)."""
    return [r for r in records if isinstance(r, dict) and any(k.startswith(CHAIN_KEYS) for k in r)]


def collect_runs(root, threshold: float | None = None) -> list[dict]:
    """Every run under root, in natural path order (job 10 after job 9)."""
    root = Path(root)
    runs = [_load_or_note(d, root, threshold) for d in find_run_dirs(root)]
    return sorted(runs, key=lambda r: _natural(r["path"]))


def _load_or_note(d: Path, root: Path, threshold: float | None) -> dict:
    """load_run, or for a run folder it cannot make sense of, a run with no figures and a note
    saying why: one damaged run never sinks a report."""
    try:
        return load_run(d, root, threshold)
    except Exception as e:  # anything a damaged or hostile folder can provoke
        rel = d.relative_to(root).as_posix()
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return {
            "path": root.resolve().name if rel == "." else rel,
            "status": "unreadable",
            "seed": None,
            "hparams": {},
            **dict.fromkeys(METRICS),
            "data": {},
            "val_metric": "headline",
            "selected_on": "test",
            "osc": {},
            "eq": {},
            "val": [],
            "wnorm": [],
            "losses": {k: [] for k in LOSS_CURVES},
            "notes": [f"could not be read, left out of every figure ({why})"],
        }


# ---------------------------------------------------------------- configurations and seed
# statistics


def value(run: dict, key: str):
    """A headline metric (summary.json), oscillation figure, equilibrium figure or the decay's
    timescale (summary's `timescale`) of a run."""
    if key in METRICS:
        return run.get(key)
    for block in (run["osc"], run.get("eq", {}), run.get("timescale", {})):
        if key in block:
            return block[key]
    return None


def varying_keys(runs: list[dict]) -> list[str]:
    """Config keys with more than one value among the runs that have them (ID_KEYS first, then by
    name)."""
    seen: dict[str, set] = {}
    for r in runs:
        for k, v in r["hparams"].items():
            # 30 and 30.0 agree
            seen.setdefault(k, set()).add(float(v) if finite_number(v) is not None else repr(v))
    keys = [k for k, vals in seen.items() if len(vals) > 1 and k not in NOT_CONFIG]
    return [k for k in ID_KEYS if k in keys] + sorted(k for k in keys if k not in ID_KEYS)


def sort_key(v):
    """Orders hparam values: numbers first by value, then everything else (None first) by its
    text."""
    return (0, v, "") if finite_number(v) is not None else (1, 0, "" if v is None else str(v))


def mean_std(xs: list) -> tuple:
    """(mean, sample std) of the finite values; std is None below two values."""
    xs = [x for x in xs if finite_number(x) is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def accuracy_noise(groups: list[dict]) -> float | None:
    """How far apart two configurations' mean best_val_acc can be by chance alone: the larger of the
    seeds' typical spread (median sample std of a configuration) and the binomial standard error
    √(a(1 − a)/N) of an accuracy a measured on N validation images (median over configurations,
    N from summary.json's data.n_val); None when neither is known."""
    spreads = [s for g in groups if (s := g["stats"]["best_val_acc"][1]) is not None]
    floors = [f for g in groups if (f := binomial_error(g)) is not None]
    return max((statistics.median(xs) for xs in (spreads, floors) if xs), default=None)


def binomial_error(g: dict) -> float | None:
    """√(a(1 − a)/N) of a configuration's mean best_val_acc a on its runs' N validation images."""
    a = g["stats"]["best_val_acc"][0]
    n_val = {finite_number(r["data"].get("n_val")) for r in g["runs"] if r.get("data")} - {None}
    if a is None or not n_val or min(n_val) <= 0:
        return None
    return math.sqrt(a * (1 - a) / min(n_val))


def group_configs(runs: list[dict], keys: list[str] | None = None) -> list[dict]:
    """Runs sharing every varying key except seed, with mean ± std of STATS over their completed
    runs."""
    keys = varying_keys(runs) if keys is None else keys
    groups: dict[tuple, dict] = {}
    for r in runs:
        key = tuple(r["hparams"].get(k) for k in keys)
        g = groups.setdefault(
            key, {"key": key, "values": dict(zip(keys, key)), "hparams": r["hparams"], "runs": []}
        )
        g["runs"].append(r)
    out = []
    for key in sorted(groups, key=lambda t: [sort_key(v) for v in t]):
        g = groups[key]
        done = [r for r in g["runs"] if r["status"] == "completed"]
        g["n"] = len(done)
        g["statuses"] = Counter(r["status"] for r in g["runs"])
        g["stats"] = {k: mean_std([value(r, k) for r in done]) for k in STATS}
        g["ci"] = {k: mean_ci([value(r, k) for r in done]) for k in STATS}
        # a mean over only the seeds that got there would flatter
        for k in (
            "epochs_to_90",
            "epochs_to_92",
        ):
            if any(value(r, k) is None for r in done):
                g["stats"][k] = (None, None)
                g["ci"][k] = mean_ci([])
        g["label"] = ", ".join(f"{k}={fmt(v)}" for k, v in g["values"].items()) or "all runs"
        out.append(g)
    return out
