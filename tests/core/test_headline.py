"""The headline evaluation: recalibrated when the run recalibrates, the running statistics
otherwise; each evaluation has its own name, and the headline is a copy under the bare name."""

from runner.core.headline import Headline


def test_the_headline_names_its_keys_and_reads_a_record():
    rec = {
        "val_loss_running": 2.0,
        "val_acc_running": 0.1,
        "val_loss_recal": 1.0,
        "val_acc_recal": 0.6,
    }
    recal, running = Headline(True), Headline(False)
    assert (recal.name, recal.key("val_acc"), recal.loss_acc(rec)) == (
        "recalibrated",
        "val_acc_recal",
        (1.0, 0.6),
    )
    assert (running.name, running.key("val_acc"), running.loss_acc(rec)) == (
        "running",
        "val_acc_running",
        (2.0, 0.1),
    )


def test_a_record_has_both_evaluations_under_their_own_names_and_the_headline_bare():
    values = {
        "val_loss_running": 2.0,
        "val_acc_running": 0.1,
        "val_loss_recal": 1.0,
        "val_acc_recal": 0.6,
        "train_eval_loss_running": 1.5,
        "train_eval_acc_running": 0.3,
        "train_eval_loss_recal": 0.5,
        "train_eval_acc_recal": 0.9,
    }
    rec = Headline(True).record(values)
    assert (rec["val_acc"], rec["val_loss"], rec["train_eval_acc"], rec["train_eval_loss"]) == (
        0.6,
        1.0,
        0.9,
        0.5,
    )
    assert rec["val_acc_running"] == 0.1 and rec["val_acc_recal"] == 0.6
    only_running = Headline(False).record({"val_loss_running": 2.0, "val_acc_running": 0.1})
    assert only_running == {
        "val_loss_running": 2.0,
        "val_acc_running": 0.1,
        "val_loss": 2.0,
        "val_acc": 0.1,
    }


def test_records_make_a_run_recalibrated_only_through_their_validation_records():
    assert Headline.of_records([{"step": 1, "val_loss": 1.0, "val_loss_recal": 0.9}]).recalibrated
    assert not Headline.of_records(
        [{"step": 1, "val_loss": 1.0}, {"step": 2, "train_loss": 1.0}]
    ).recalibrated
