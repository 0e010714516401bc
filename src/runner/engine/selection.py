"""Honest selection: which images chose the reported checkpoint, and the test accuracy of the
weights chosen.

best.pt is the checkpoint of the best headline validation accuracy (engine.validation), so its
accuracy was used to choose it. With data.val_split the validation images are held out of the
training images and the test split stays apart: at the end of a completed run the test split is
evaluated once with the final weights and once with best.pt's (each in the headline evaluation:
best.pt holds the BatchNorm statistics it was measured with). Without a split the validation images
are the test split, so best_val_acc was selected on test.

    selected_on           "val_split" (data.val_split images chose best.pt) | "test" (the test split
                          did)
    test_acc_final, test_loss_final          the test split, final weights (val_split runs that
                                             completed)
    test_acc_selected, test_loss_selected    the test split, best.pt's weights; selected_step is
                                             best.pt's step
"""

from __future__ import annotations

import torch

from runner.core.evaluation import evaluate
from runner.engine import checkpoint
from runner.engine.run import Run
from runner.engine.validation import recalibration


def selection(run: Run) -> dict:
    """summary.json's selection keys (module docstring); evaluates the test split when the run
    held one out."""
    test, t = run.data.test, run.trainee
    out = {"selected_on": "test" if test is None else "val_split"}
    best = run.out.run_dir / "checkpoints" / checkpoint.BEST
    if test is None or run.stats.status != "completed" or not best.is_file():
        return out
    with recalibration(run):
        final = evaluate(t.model, t.eval_forward, test)
    saved = torch.load(best, map_location=run.device, weights_only=True)
    now = {k: v.clone() for k, v in t.model.state_dict().items()}
    # in place: a recorded eval graph reads these parameters
    t.model.load_state_dict(saved["model"])
    try:
        selected = evaluate(t.model, t.eval_forward, test)
    finally:
        t.model.load_state_dict(now)
    (fl, fa), (sl, sa) = torch.stack(final).tolist(), torch.stack(selected).tolist()  # host reads
    return {
        **out,
        "test_acc_final": fa,
        "test_loss_final": fl,
        "test_acc_selected": sa,
        "test_loss_selected": sl,
        "selected_step": saved["step"],
    }


def selected_note(summary: dict) -> str:
    """How the log line and the report say what chose the best accuracy."""
    if summary.get("selected_on") == "val_split":
        return "selected on the held-out split"
    return "selected on test"
