"""What a person watching the run sees: a tqdm bar on a terminal (trainer.progress=null), or
plain log lines elsewhere, fed by the loop at each step, log point, validation and epoch end.
Nothing here reads a device value: the loop hands over what it has already read."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager, nullcontext

from runner.engine.run import Run


class Progress:
    """A run's live progress. `Progress.quiet(run)` shows nothing but the validations' log lines
    (the runs of a pack); `with Progress.shown(run, bar=...)` opens a bar or writes log lines."""

    def __init__(self, run: Run, bar=None):
        self.run, self.bar = run, bar

    @classmethod
    def quiet(cls, run: Run) -> "Progress":
        return cls(run)

    @classmethod
    @contextmanager
    def shown(cls, run: Run, bar: bool):
        """A bar for the run (log lines routed through tqdm.write, so the two never garble each
        other), closed and left on screen at the end; or plain log lines."""
        if not bar:
            yield cls(run)
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        shown = tqdm(total=run.total, initial=run.state.step, dynamic_ncols=True, file=sys.stderr)
        try:
            with logging_redirect_tqdm(loggers=[logging.getLogger()]):
                yield cls(run, shown)
        finally:
            shown.close()  # the last loss, lr and accuracy stay visible

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log_point(self, loss: float, lr: float | None) -> None:
        run, s = self.run, self.run.state
        if self.bar is not None:
            shown = {"loss": f"{loss:.3f}", "lr": "-" if lr is None else f"{lr:.2e}"}
            acc = run.headline.loss_acc(s.last_val)[1] if s.last_val else None
            shown[run.headline.key("val_acc")] = "-" if acc is None else f"{acc:.3f}"
            self.bar.set_postfix(**shown)
        elif s.step % run.cfg.trainer.log_every == 0 or s.step == run.total:
            epoch = s.step / run.steps_per_epoch
            run.out.log.info(
                "step %d/%d epoch %.2f loss %.4f lr %.3g",
                s.step,
                run.total,
                epoch,
                loss,
                lr if lr is not None else float("nan"),
            )

    def validation(self, rec: dict) -> None:
        keys = ("val_acc_recal", "val_loss_recal", "val_acc_running", "val_loss_running")
        own = " ".join(f"{k} {rec[k]:.4f}" for k in keys if k in rec)
        headline = self.run.headline.key("val_acc")
        self.run.out.log.info(
            "step %d epoch %.2f %s (val_acc = %s)", rec["step"], rec["epoch"], own, headline
        )

    def epoch_end(self, rec: dict) -> None:
        pass

    def validation_bar(self, run: Run):
        """A second bar under the run's bar for the validation's batches (both evaluations), so a
        long validation shows that it moves; nothing without a run bar."""
        if self.bar is None:
            return nullcontext(None)
        from tqdm import tqdm

        passes = 1 if run.data.recal_images is None else 2
        n = sum(len(loader) for _, loader in run.data.evals.items()) * passes
        images = sum(len(loader.y) for _, loader in run.data.evals.items())
        desc = f"validation ({images} images)"
        return tqdm(total=n, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
