"""The headline evaluation: recalibrated when the run recalibrates, the running statistics otherwise; each evaluation
has its own name, and the headline is a copy under the bare name."""

from runner.core.headline import Headline, named
from runner.engine.records import read_metrics


def test_the_headline_names_its_keys_and_reads_a_record():
    rec = {"val_loss_running": 2.0, "val_acc_running": 0.1, "val_loss_recal": 1.0, "val_acc_recal": 0.6}
    recal, running = Headline(True), Headline(False)
    assert (recal.name, recal.key("val_acc"), recal.loss_acc(rec)) == ("recalibrated", "val_acc_recal", (1.0, 0.6))
    assert (running.name, running.key("val_acc"), running.loss_acc(rec)) == ("running", "val_acc_running", (2.0, 0.1))


def test_a_record_carries_both_evaluations_under_their_own_names_and_the_headline_under_the_bare_name():
    values = {"val_loss_running": 2.0, "val_acc_running": 0.1, "val_loss_recal": 1.0, "val_acc_recal": 0.6,
              "train_eval_loss_running": 1.5, "train_eval_acc_running": 0.3,
              "train_eval_loss_recal": 0.5, "train_eval_acc_recal": 0.9}  # fmt: skip
    rec = Headline(True).record(values)
    assert (rec["val_acc"], rec["val_loss"], rec["train_eval_acc"], rec["train_eval_loss"]) == (0.6, 1.0, 0.9, 0.5)
    assert rec["val_acc_running"] == 0.1 and rec["val_acc_recal"] == 0.6
    only_running = Headline(False).record({"val_loss_running": 2.0, "val_acc_running": 0.1})
    assert only_running == {"val_loss_running": 2.0, "val_acc_running": 0.1, "val_loss": 2.0, "val_acc": 0.1}


def test_a_record_written_before_the_running_evaluation_had_its_own_name_reads_in_todays_names():
    old = {"step": 5, "val_loss": 2.0, "val_acc": 0.1, "val_loss_recal": 1.0, "val_acc_recal": 0.6,
           "train_eval_loss": 1.5, "train_eval_acc": 0.3}  # fmt: skip
    new = named(old)
    assert (new["val_loss_running"], new["val_acc_running"], new["train_eval_acc_running"]) == (2.0, 0.1, 0.3)
    assert (new["val_loss"], new["val_acc"]) == (1.0, 0.6)  # the bare names are the headline now: recalibrated
    assert new["train_eval_acc"] == 0.3  # no recalibrated train_eval: its headline copy is not invented
    assert "train_eval_acc" in new and "train_eval_acc_recal" not in new
    assert named({"step": 5, "val_loss": 2.0, "val_acc": 0.1}) == {
        "step": 5, "val_loss": 2.0, "val_acc": 0.1, "val_loss_running": 2.0, "val_acc_running": 0.1}  # fmt: skip
    today = Headline(True).record({"val_loss_running": 2.0, "val_acc_running": 0.1, "val_loss_recal": 1.0,
                                   "val_acc_recal": 0.6})  # fmt: skip
    assert named(today) == today and named({"step": 1, "train_loss": 3.0}) == {"step": 1, "train_loss": 3.0}


def test_an_old_metrics_file_is_read_in_todays_names(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "epoch": 0.5, "train_loss": 2.3}\n{"step": 2, "epoch": 1.0, "val_loss": 2.0, "val_acc": 0.1}\n'
    )
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert recs[0] == {"step": 1, "epoch": 0.5, "train_loss": 2.3}
    assert (recs[1]["val_acc_running"], recs[1]["val_acc"]) == (0.1, 0.1)


def test_records_make_a_run_recalibrated_only_through_their_validation_records():
    assert Headline.of_records([{"step": 1, "val_loss": 1.0, "val_loss_recal": 0.9}]).recalibrated
    assert not Headline.of_records([{"step": 1, "val_loss": 1.0}, {"step": 2, "train_loss": 1.0}]).recalibrated
