"""summary.json (runner.engine.summary): what it reports, and that it is written whatever
happens."""

from conftest import TINY


def test_the_summary_says_which_accuracy_it_reports_and_what_ran(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.train import train

    s = train(
        validate(compose_cfg(*TINY, "trainer.max_steps=3", "data.n_train=128", "data.n_val=50")),
        tmp_path,
    )
    assert s["val_metric"] == "recalibrated" and s["best_val_acc"] == s["best_val_acc_recal"]
    assert {"best_val_acc_running", "final_val_acc_running", "final_val_loss_running"} <= s.keys()
    assert s["path"] == {
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "compile_mode": None,
        "cuda_graphs": False,
        "channels_last": False,
    }
    assert (
        s["data"]["name"] == "synthetic"
        and s["data"]["n_train"] == 128
        and len(s["data"]["fingerprint"]) == 16
        and s["data"]["n_recalibrate"] == 128  # 256 asked, all 128 training images used
    )
    assert {"commit", "dirty"} <= s["code"].keys() and s["env"]["torch"]
    assert s["env"]["malloc"] != "unchanged"  # a CPU run sets the allocator (engine.allocator)
    assert {"compile_s", "capture_s", "warmup_s", "first_step_s"} <= s["startup"].keys()


def test_a_signal_while_the_summary_is_written_waits_for_it_and_is_passed_on_after(
    tmp_path, monkeypatch
):
    """SIGTERM after the loop (a SLURM time limit at the last step): the summary is still written
    whole, and the handler that was there before the run (submitit's requeue) gets the signal once,
    after summary.json exists."""
    import os
    import signal

    from conftest import compose_cfg

    import runner.engine.summary as summary_mod
    from runner.config import validate
    from runner.engine.train import train

    seen = []
    previous = signal.signal(
        signal.SIGTERM, lambda s, f: seen.append((tmp_path / "summary.json").exists())
    )
    real = summary_mod.summarize

    def signalled(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(summary_mod, "summarize", signalled)
    try:
        s = train(validate(compose_cfg(*TINY, "trainer.max_steps=3")), tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert s["status"] == "completed" and seen == [True]


def test_a_run_whose_metrics_file_was_removed_still_ends_with_its_summary(tmp_path, monkeypatch):
    from conftest import compose_cfg

    import runner.engine.loop as loop_mod
    from runner.config import validate
    from runner.engine.train import train

    real = loop_mod.note_step

    def removing(run, *a):
        if run.state.step == 2:
            (tmp_path / "metrics.jsonl").unlink()
        return real(run, *a)

    monkeypatch.setattr(loop_mod, "note_step", removing)
    s = train(validate(compose_cfg(*TINY, "trainer.max_steps=4")), tmp_path)
    assert s["status"] == "completed" and (tmp_path / "summary.json").is_file()


def summary_of(tmp_path, *overrides, **fields):
    """summary.json of a run of TINY with `overrides` that ended as `fields` say."""
    import dataclasses
    import json

    from conftest import compose_cfg

    from runner.config import validate

    hparams = dataclasses.asdict(validate(compose_cfg(*TINY, *overrides)))
    (tmp_path / "summary.json").write_text(json.dumps({**fields, "hparams": hparams}))


def test_a_run_that_ended_is_left_as_it_is_and_any_other_summary_is_set_up_again(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.summary import completed_summary

    cfg = validate(compose_cfg(*TINY))
    summary_of(tmp_path, status="completed", steps=16)
    assert completed_summary(cfg, tmp_path)["steps"] == 16
    assert completed_summary(validate(compose_cfg(*TINY, "epochs=3")), tmp_path) is None
    assert completed_summary(validate(compose_cfg(*TINY, "lr=0.5")), tmp_path) is None
    # a diverged run would diverge again at the same step, whatever its length
    summary_of(tmp_path, status="diverged", steps=5, diverged_at_step=5)
    assert completed_summary(validate(compose_cfg(*TINY, "epochs=3")), tmp_path)["steps"] == 5
    summary_of(tmp_path, status="interrupted", steps=5)
    assert completed_summary(cfg, tmp_path) is None


def test_a_summary_that_is_not_one_is_no_completed_run(tmp_path):
    import os

    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.summary import completed_summary

    cfg = validate(compose_cfg(*TINY))
    for text in ("[1, 2]", '"completed"', "\xff\xfe", "{}"):
        (tmp_path / "summary.json").write_text(text, encoding="latin-1")
        assert completed_summary(cfg, tmp_path) is None
    (tmp_path / "summary.json").unlink()
    os.mkfifo(tmp_path / "summary.json")  # read, it would block for ever
    assert completed_summary(cfg, tmp_path) is None


def test_the_summary_is_never_written_through_a_link_planted_at_its_temporary_name(tmp_path):
    from runner.engine.summary import write_summary

    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json.tmp").symlink_to(victim)
    write_summary(run, {"status": "completed"})
    assert victim.read_text() == "the user's own file\n"
    assert (run / "summary.json").read_text().startswith("{")
