"""What the GPU command (scripts/gpu.py) reads from its stages and writes as OUT/README.md: the
figures of each run and benchmark, named for exactly what they are, as a table."""

from __future__ import annotations

import json
from pathlib import Path


def run_figures(run_dir: Path) -> dict:
    """What summary.json and metrics.jsonl say about a run's speed."""
    path = run_dir / "summary.json"
    if not path.exists():
        return {}
    s = json.loads(path.read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line) for line in lines if line.strip()]
    keep = ("status", "images_per_s", "images_per_s_overall", "startup_s", "startup", "stall_s")
    keep += ("val_first_s", "val_s", "final_val_acc", "wall_time_s", "device", "path")
    keep += ("path_fallback",)
    out = {k: s.get(k) for k in keep}
    out["epoch_train_s"] = [r["epoch_train_s"] for r in epochs if "epoch_train_s" in r]
    out["epoch_s_est"] = 50_000 / s["images_per_s"] if s.get("images_per_s") else None
    return out


def bench_figures(folder: Path) -> dict:
    """A bench stage's figures from the JSON its benchmarks wrote in `folder`, as far as they got:
    their flat summaries as one (bench.py's loop rates, bench_evaluation.py's times, bench_ops.py's
    counts), bench_pack.py's row, bench_evaluation.py's rows."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}
    if not found:
        return {}
    summary = {}
    # bench.py's last: where two name the model, the loop's is the one its table rows mean
    for name in sorted(found, key=lambda name: name == "bench"):
        summary.update(found[name].get("summary") or {})
    return {
        "summary": summary or None,
        "pack": found.get("bench_pack", {}).get("pack"),
        "evaluation": found.get("bench_evaluation", {}).get("evaluation"),
    }


def what_ran(f: dict) -> str:
    """The execution path a run ended on, and each fallback that led there (summary.json)."""
    p = f.get("path")
    if not p:
        return "not measured"
    ran = ", ".join(
        [p["precision"]] + ["compiled"] * p["compile"] + ["CUDA graphs"] * p["cuda_graphs"]
    )
    moves = [
        f"fell back from {m['from']} after {m['after_steps']} steps: {m['reason']}"
        for m in f.get("path_fallback") or []
    ]
    return "; ".join([ran, *moves])


def json_figures(path: Path) -> dict:
    """A stage's own JSON result (the compile probe's), if it wrote one."""
    return json.loads(path.read_text()) if path.exists() else {}


def _n(v, fmt: str = ",.0f", unit: str = "") -> str:
    return "not measured" if v is None else f"{format(v, fmt)}{unit}"


def markdown(results: dict) -> str:
    """The figures as a table: what the README's speed rows point to."""
    env, d, st = results["env"], results["data"], results["stages"]
    code = env["code"]
    commit = (code.get("commit") or "?")[:10] + (" (dirty)" if code.get("dirty") else "")
    tarball = f" ({d['tarball']}, sha256 {d['sha256'][:12]})" if d and d.get("tarball") else ""
    lines = [
        f"# `make gpu` on {env['card']}",
        "",
        f"{env['date']}; driver {env['driver']}, torch {env['torch']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}, Python {env['python']}, {env['cpus']} CPUs; commit {commit}; "
        f"data {d['name'] if d else '?'}{tarball}; deadline {results['deadline_s']:.0f} s. "
        "Rerun: `make gpu DATA=...`; every figure below is in gpu.json with the command that "
        "measured it.",
        "",
        f"torch.compile: {results.get('compile', {}).get('note', 'not probed')}",
        "",
        "| stage | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v.get('status')} | {v.get('seconds', '–')} |" for k, v in st.items()]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in figures(st).items()]
    return "\n".join(lines) + "\n"


def figures(st: dict) -> dict:
    """{what: value as text}: each figure named for exactly what it is."""
    out = {}
    for name in ("default_cold", "default_warm"):
        f = st.get(name, {}).get("figures") or {}
        run = f"default run ({name[8:]} compile cache)"
        out[f"{run}: what ran"] = what_ran(f)
        out[f"{run}: steady images/s"] = _n(f.get("images_per_s"))
        out[f"{run}: s per 50k-image epoch, steady"] = _n(f.get("epoch_s_est"), ".2f", " s")
        out[f"{run}: start-up"] = _n(f.get("startup_s"), ".1f", " s")
        out[f"{run}: validation pass, after the first"] = _n(f.get("val_s"), ".3f", " s")
    b = (st.get("bench", {}).get("figures") or {}).get("summary") or {}
    for path, rates in (b.get("loop_images_per_s") or {}).items():
        for batch, rate in rates.items():
            out[f"loop, {path}, batch {batch}: images/s"] = _n(rate)
    for path, s in (b.get("validation_10000_images_s") or {}).items():
        out[f"validation of 10,000 images ({path})"] = _n(s, ".3f", " s")
    for path, s in (b.get("recalibration_s") or {}).items():
        out[f"BatchNorm recalibration ({path})"] = _n(s, ".4f", " s")
    pack = (st.get("bench", {}).get("figures") or {}).get("pack") or {}
    if pack:
        ratio = f"({pack['ratio']:.2f}×)"
        rates = f"{pack['pack_images_per_s']:,.0f} vs {pack['sequential_images_per_s']:,.0f}"
        out[f"pack of {pack['k']}: aggregate images/s vs sequential"] = f"{rates} {ratio}"
    m = (st.get("bench_more", {}).get("figures") or {}).get("summary") or {}
    for batch, rate in (m.get("tutorial_images_per_s") or {}).items():
        out[f"tutorial DataLoader loop, batch {batch}: images/s"] = _n(rate)
    for batch, rate in ((m.get("loop_images_per_s") or {}).get("eager") or {}).items():
        out[f"loop, eager, batch {batch}: images/s"] = _n(rate)
    return out
