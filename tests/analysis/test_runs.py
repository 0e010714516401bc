"""runner.analysis.runs: run folders as Hydra and the trainer leave them, finished or not, read into
comparable runs.

A run that never wrote summary.json (still running, killed, out of memory) has only Hydra's saved
config, whose optimizer preset values are interpolations (`wd: ${reg_or:${reg},5.0e-4}`): they must
be resolved so that such a run joins the configuration of its finished seeds instead of forming one
of its own.
"""

import json

import pytest

from runner.analysis.figures import heatmap_grid, oscillation_series
from runner.analysis.runs import (
    collect_runs,
    finite_number,
    flatten_hparams,
    group_configs,
    load_run,
    loss_curves,
    read_saved_config,
    varying_keys,
)
from runner.core.headline import Headline

# what Hydra writes into .hydra/config.yaml for `optimizer=adamw` or `optimizer=adam_l2`
# (interpolations unresolved)
SAVED = """\
lr: {lr}
epochs: 3
batch_size: 128
seed: {seed}
resume: null
log:
  histograms_every: 0
reg: {reg}
wd: {wd}
l2: {l2}
optimizer:
  name: {opt}
  algorithm: adam
  betas: [0.9, 0.999]
"""
PRESET = {"adamw": ("${reg_or:${reg},5.0e-4}", 0.0), "adam_l2": (0.0, "${reg_or:${reg},2.0e-4}")}


def saved_config(lr, reg, seed=0, opt="adamw", extra=""):
    wd, l2 = PRESET[opt]
    return (
        SAVED.format(lr=lr, reg="null" if reg is None else reg, seed=seed, wd=wd, l2=l2, opt=opt)
        + extra
    )


def resolved(lr, reg, seed=0, opt="adamw"):
    """The same config as the trainer writes it into summary.json's hparams: resolved."""
    lam = reg if reg is not None else (5e-4 if opt == "adamw" else 2e-4)
    return {
        "lr": lr,
        "epochs": 3,
        "batch_size": 128,
        "seed": seed,
        "resume": None,
        "log": {"histograms_every": 0},
        "reg": reg,
        "wd": lam if opt == "adamw" else 0.0,
        "l2": lam if opt == "adam_l2" else 0.0,
        "optimizer": {"name": opt, "algorithm": "adam", "betas": [0.9, 0.999]},
    }


def val_records(losses, accs, recal=None, acc_recal=None, steps_per_epoch=2):
    """Per epoch: train records with train_loss = 2 × the epoch's val loss, then one validation
    record; recal/acc_recal add val_loss_recal/val_acc_recal as a trainer with
    trainer.bn_recalibrate ≠ 0 does."""
    out = []
    for i, (v, a) in enumerate(zip(losses, accs)):
        for k in range(steps_per_epoch):
            step = i * steps_per_epoch + k + 1
            out.append(
                {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "train_loss": 2 * v,
                    "lr": 1e-3,
                    "decay": 0.0,
                }
            )
        values = {"val_loss_running": v, "val_acc_running": a}
        if recal is not None:
            values.update(val_loss_recal=recal[i], val_acc_recal=acc_recal[i])
        r = Headline(recal is not None).record(values)
        out.append({"step": (i + 1) * steps_per_epoch, "epoch": float(i + 1), **r})
    return out


def write_run(d, config_text, records=None, summary=None):
    """A run folder: .hydra/config.yaml always, metrics.jsonl and summary.json when given."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(config_text)
    if records is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))


def finished(hp, best, status="completed"):
    return {
        "status": status,
        "steps": 6,
        "epochs": 3.0,
        "best_val_acc": best,
        "final_val_acc": best,
        "final_val_loss": 1.0,
        "hparams": hp,
    }


# ---------------------------------------------------------------- small helpers


def test_finite_number_keeps_the_type_and_drops_what_is_not_a_finite_number():
    # an int stays an int (tables print "3")
    assert finite_number(3) == 3 and isinstance(finite_number(3), int)
    assert finite_number(0.5) == 0.5
    assert [finite_number(x) for x in (True, None, "1", float("nan"), float("inf"))] == [None] * 5


def test_flatten_hparams_dotted_keys_and_lists_as_one_value():
    assert flatten_hparams({"lr": 1e-3, "optimizer": {"name": "adamw", "betas": [0.9, 0.999]}}) == {
        "lr": 1e-3,
        "optimizer.name": "adamw",
        "optimizer.betas": "[0.9,0.999]",
    }


# ---------------------------------------------------------------- the saved config of an unfinished
# run


def test_saved_config_is_resolved_like_hydra_resolves_it(tmp_path):
    (tmp_path / "a.yaml").write_text(saved_config(1e-3, None))
    cfg, note = read_saved_config(tmp_path / "a.yaml")
    assert note is None
    assert (cfg["wd"], cfg["l2"]) == (5e-4, 0.0)  # reg unset: the preset's default
    (tmp_path / "b.yaml").write_text(saved_config(1e-3, 1e-4, opt="adam_l2"))
    cfg, _ = read_saved_config(tmp_path / "b.yaml")
    assert (cfg["wd"], cfg["l2"]) == (0.0, 1e-4)  # a reg sweep: the shared strength
    assert cfg["optimizer"]["betas"] == [0.9, 0.999]


def test_an_unresolvable_value_keeps_its_text_and_is_named_in_a_note(tmp_path):
    extra = "data:\n  root: ${hydra:runtime.cwd}/data\n  name: ${missing.key}\n  subset: 100\n"
    (tmp_path / "c.yaml").write_text(saved_config(1e-3, None, extra=extra))
    cfg, note = read_saved_config(tmp_path / "c.yaml")
    assert cfg["wd"] == 5e-4 and cfg["data"]["subset"] == 100  # the rest is still resolved
    assert (
        cfg["data"]["root"] == "${hydra:runtime.cwd}/data"
        and cfg["data"]["name"] == "${missing.key}"
    )
    assert (
        note
        == "could not resolve data.root, data.name in tmp_path/c.yaml: shown unresolved".replace(
            "tmp_path", tmp_path.name
        )
    )


def test_unreadable_or_missing_config(tmp_path):
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    cfg, note = read_saved_config(tmp_path / "bad.yaml")
    assert cfg is None and note.startswith(f"{tmp_path.name}/bad.yaml unreadable")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert read_saved_config(tmp_path / "list.yaml") == (
        None,
        f"{tmp_path.name}/list.yaml is not a mapping",
    )
    assert read_saved_config(tmp_path / "none.yaml") == (None, None)


def test_a_run_with_an_unresolvable_config_still_loads_and_says_so(tmp_path):
    write_run(
        tmp_path / "r",
        saved_config(1e-3, None, extra="note_key: ${oops:}\n"),
        records=val_records([2.0, 1.0], [0.5, 0.7]),
    )
    run = load_run(tmp_path / "r", tmp_path)
    assert run["status"] == "running" and run["hparams"]["wd"] == 5e-4
    assert run["notes"] == ["could not resolve note_key in .hydra/config.yaml: shown unresolved"]
    assert run["best_val_acc"] == 0.7


# ---------------------------------------------------------------- headline metrics of a run without
# summary.json


def test_killed_run_headline_uses_the_recalibrated_evaluation_when_recorded(tmp_path):
    recs = val_records(
        [2.0, 1.0, 1.5], [0.5, 0.8, 0.7], recal=[1.8, 0.9, 0.95], acc_recal=[0.55, 0.82, 0.84]
    )
    write_run(tmp_path / "r", saved_config(1e-3, None), records=recs)
    run = load_run(tmp_path / "r", tmp_path)
    assert run["best_val_acc"] == 0.84  # max val_acc_recal, as summary.json would report (not 0.8)
    assert run["final_val_acc"] == 0.84 and run["final_val_loss"] == 0.95
    assert run["steps"] == 6 and run["epochs"] == 3.0


def test_killed_run_headline_without_recalibration_uses_running_statistics(tmp_path):
    write_run(
        tmp_path / "r",
        saved_config(1e-3, None),
        records=val_records([2.0, 1.0, 1.5], [0.5, 0.8, 0.7]),
    )
    run = load_run(tmp_path / "r", tmp_path)
    assert (run["best_val_acc"], run["final_val_acc"], run["final_val_loss"]) == (0.8, 0.7, 1.5)


def test_summary_values_win_over_the_records(tmp_path):
    recs = val_records([2.0, 1.0], [0.5, 0.8], recal=[1.8, 0.9], acc_recal=[0.55, 0.82])
    write_run(
        tmp_path / "r",
        saved_config(1e-3, None),
        records=recs,
        summary=finished(resolved(1e-3, None), 0.83),
    )
    run = load_run(tmp_path / "r", tmp_path)
    assert run["status"] == "completed" and run["best_val_acc"] == 0.83 and run["notes"] == []


def test_a_run_reached_through_latest_is_named_by_its_own_folder(tmp_path):
    run = tmp_path / "outputs" / "2026-12-01" / "10-00-00_abc123"
    write_run(run, saved_config(1e-3, None), summary=finished(resolved(1e-3, None), 0.8))
    (tmp_path / "outputs" / "latest").symlink_to("2026-12-01/10-00-00_abc123")
    (found,) = collect_runs(tmp_path / "outputs" / "latest")
    assert found["path"] == "10-00-00_abc123"


# ---------------------------------------------------------------- a sweep caught mid-way, and one
# after a crash


@pytest.fixture
def mid_sweep(tmp_path):
    """lr × reg sweep of adamw. (1e-3, 1e-4): seed 0 finished, seed 1 killed, seed 2 not started;
    (1e-3, 5e-4) and (3e-3, 1e-4) finished; (3e-3, 5e-4) killed before writing summary.json."""
    recs = val_records(
        [2.0, 1.0, 1.2], [0.5, 0.8, 0.9], recal=[1.9, 1.0, 1.0], acc_recal=[0.5, 0.85, 0.91]
    )
    jobs = [
        ((1e-3, 1e-4, 0), "completed"),
        ((1e-3, 1e-4, 1), "killed"),
        ((1e-3, 1e-4, 2), "not started"),
        ((1e-3, 5e-4, 0), "completed"),
        ((3e-3, 1e-4, 0), "completed"),
        ((3e-3, 5e-4, 0), "killed"),
    ]
    for i, ((lr, reg, seed), state) in enumerate(jobs):
        summary = finished(resolved(lr, reg, seed), 0.9) if state == "completed" else None
        write_run(
            tmp_path / "sweep" / str(i),
            saved_config(lr, reg, seed),
            records=None if state == "not started" else recs,
            summary=summary,
        )
    return collect_runs(tmp_path / "sweep")


def test_unfinished_runs_join_the_configuration_of_their_finished_seeds(mid_sweep):
    assert [r["hparams"]["wd"] for r in mid_sweep] == [1e-4, 1e-4, 1e-4, 5e-4, 1e-4, 5e-4]
    keys = varying_keys(mid_sweep)
    assert keys == ["lr", "wd"]  # not a third "wd" value that reads ${reg_or:${reg},5.0e-4}
    groups = group_configs(mid_sweep, keys)
    assert [g["values"] for g in groups] == [
        {"lr": 1e-3, "wd": 1e-4},
        {"lr": 1e-3, "wd": 5e-4},
        {"lr": 3e-3, "wd": 1e-4},
        {"lr": 3e-3, "wd": 5e-4},
    ]
    assert dict(groups[0]["statuses"]) == {"completed": 1, "running": 1, "not started": 1}
    # completed runs only
    assert groups[0]["n"] == 1 and groups[0]["stats"]["best_val_acc"] == (
        0.9,
        None,
    )
    assert dict(groups[3]["statuses"]) == {"running": 1}


def test_unfinished_runs_appear_in_the_heat_map_grid(mid_sweep):
    keys = varying_keys(mid_sweep)
    grid = heatmap_grid(group_configs(mid_sweep, keys), keys)
    assert (grid["x_values"], grid["y_values"]) == ([1e-3, 3e-3], [1e-4, 5e-4])
    (panel,) = grid["panels"]
    assert panel["values"] == [[0.9, 0.9], [0.9, None]]
    assert panel["labels"][1][1] == "run"  # the killed cell sits where its lr and wd say


def test_unfinished_runs_appear_in_the_oscillation_series(mid_sweep):
    keys = varying_keys(mid_sweep)
    s = oscillation_series(group_configs(mid_sweep, keys), keys)
    assert list(s) == ["lr=0.001", "lr=0.003"]
    assert [lam for lam, _ in s["lr=0.003"]] == [1e-4, 5e-4]  # the killed run's λ is on the axis
    assert s["lr=0.003"][1][1]["tv_per_epoch"] is None  # with no completed seed to average


def test_mixed_presets_after_a_crash_share_one_decay_axis(tmp_path):
    # a sweep over optimizer=adamw,adam_l2 reg=...: every job crashed before summary.json
    recs = val_records([2.0, 1.0], [0.5, 0.8])
    for i, (opt, reg) in enumerate([(o, r) for o in ("adamw", "adam_l2") for r in (1e-4, 5e-4)]):
        write_run(tmp_path / str(i), saved_config(1e-3, reg, opt=opt), records=recs)
    runs = collect_runs(tmp_path)
    keys = varying_keys(runs)
    assert keys == ["optimizer.name", "wd", "l2"]
    s = oscillation_series(group_configs(runs, keys), keys)
    assert {k: [lam for lam, _ in v] for k, v in s.items()} == {
        "optimizer.name=adam_l2": [1e-4, 5e-4],
        "optimizer.name=adamw": [1e-4, 5e-4],
    }


def test_the_oscillation_figures_come_from_the_records_not_from_the_summary(tmp_path):
    recs = val_records(
        [2.0, 1.0, 1.5], [0.5, 0.8, 0.7], recal=[1.8, 0.9, 0.95], acc_recal=[0.55, 0.82, 0.84]
    )
    summary = {**finished(resolved(1e-3, None), 0.84), "oscillation": {"tv_per_epoch": 9.0}}
    write_run(tmp_path / "r", saved_config(1e-3, None), records=recs, summary=summary)
    osc = load_run(tmp_path / "r", tmp_path)["osc"]
    assert osc["tv_per_epoch"] == pytest.approx(1.5 / 2)
    assert osc["tv_per_epoch_recal"] == pytest.approx(0.95 / 2)
    assert load_run(tmp_path / "r", tmp_path, threshold=0.6)["osc"]["n_rises"] == 0  # rise 50 %


# ---------------------------------------------------------------- a run's loss figure, as data


def test_loss_curves_of_a_run_with_every_evaluation():
    recs = [
        {"step": s, "epoch": s / 2, "train_loss": x}
        for s, x in [(1, 4.0), (2, 2.0), (3, 1.5), (4, 0.5)]
    ]
    both = Headline(True).record
    # an epoch record: no loss
    recs += [
        {
            "step": 2,
            "epoch": 1.0,
            **both(
                {
                    "val_loss_running": 2.5,
                    "val_acc_running": 0.4,
                    "val_loss_recal": 2.2,
                    "val_acc_recal": 0.5,
                    "train_eval_loss_running": 2.1,
                    "train_eval_acc_running": 0.5,
                }
            ),
        },
        {
            "step": 4,
            "epoch": 2.0,
            **both(
                {
                    "val_loss_running": 1.4,
                    "val_acc_running": 0.6,
                    "val_loss_recal": 1.1,
                    "val_acc_recal": 0.7,
                    "train_eval_loss_running": 0.9,
                    "train_eval_acc_running": 0.8,
                }
            ),
        },
        {"step": 4, "epoch": 2.0, "epoch_train_s": 1.5, "epoch_images": 256},
    ]
    assert loss_curves(recs) == {
        # mean of steps 1-2, then of steps 3-4 (since the last validation)
        "train_loss": [
            (1.0, 3.0),
            (2.0, 1.0),
        ],
        "train_eval_loss_running": [(1.0, 2.1), (2.0, 0.9)],
        "val_loss_running": [(1.0, 2.5), (2.0, 1.4)],
        "val_loss_recal": [(1.0, 2.2), (2.0, 1.1)],
    }


def test_loss_curves_leave_out_what_the_run_did_not_record():
    c = loss_curves(val_records([2.0, 1.0], [0.5, 0.8]))  # no recalibration, no train_eval
    assert c["train_loss"] == [(1.0, 4.0), (2.0, 2.0)] and c["val_loss_running"] == [
        (1.0, 2.0),
        (2.0, 1.0),
    ]
    assert c["train_eval_loss_running"] == [] and c["val_loss_recal"] == []
    assert loss_curves([]) == {
        "train_loss": [],
        "train_eval_loss_running": [],
        "val_loss_running": [],
        "val_loss_recal": [],
    }


def test_loss_curves_skip_non_finite_train_losses_and_stop_with_a_diverged_series():
    recs = val_records([2.0, 1.0, 3.0], [0.5, 0.8, 0.1])
    recs[0]["train_loss"] = None  # one NaN step (stored as null) among the first epoch's two
    recs[-1]["val_loss"] = recs[-1]["val_loss_running"] = None  # diverged at the last validation
    c = loss_curves(recs)
    assert c["train_loss"] == [(1.0, 4.0), (2.0, 2.0)]
    assert c["val_loss_running"] == [(1.0, 2.0), (2.0, 1.0)]


def test_load_run_carries_the_loss_curves(tmp_path):
    recs = val_records([2.0, 1.0], [0.5, 0.8], recal=[1.5, 0.9], acc_recal=[0.6, 0.85])
    write_run(tmp_path / "r", saved_config(1e-3, None), records=recs)
    assert load_run(tmp_path / "r", tmp_path)["losses"]["val_loss_recal"] == [
        (1.0, 1.5),
        (2.0, 0.9),
    ]


def test_oscillation_series_carries_the_recalibrated_twins(mid_sweep):
    keys = varying_keys(mid_sweep)
    s = oscillation_series(group_configs(mid_sweep, keys), keys)
    (lam, d), _ = s["lr=0.001"]
    assert set(d) == {"tv_per_epoch", "tv_per_epoch_recal", "max_rise_rel", "max_rise_rel_recal"}
    # val 2.0, 1.0, 1.2 and recal 1.9, 1.0, 1.0 over epochs 1-3 (the summaries have no block: from
    # the records)
    assert d["tv_per_epoch"] == pytest.approx(1.2 / 2) and d["tv_per_epoch_recal"] == pytest.approx(
        0.9 / 2
    )
    assert d["max_rise_rel"] == pytest.approx(0.2) and d["max_rise_rel_recal"] == 0
    assert group_configs(mid_sweep, keys)[0]["stats"]["recal_removed_share"] == (
        pytest.approx(0.25),
        None,
    )


def test_an_unreadable_summary_is_a_note(tmp_path):
    write_run(tmp_path / "r", saved_config(1e-3, None), records=val_records([2.0, 1.0], [0.5, 0.8]))
    (tmp_path / "r" / "summary.json").write_text('{"status": "compl')
    run = load_run(tmp_path / "r", tmp_path)
    assert run["status"] == "running" and run["best_val_acc"] == 0.8
    assert run["notes"] == ["summary.json unreadable: status and metrics from the other files"]
