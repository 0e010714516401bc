"""What a person watching the run sees: a tqdm bar on a terminal (trainer.progress=null), or
plain log lines elsewhere, fed by the loop at each step, log point, validation and epoch end;
and, with or without a bar, one line per epoch as Keras' `fit` prints it.

The bar shows the epoch, the epoch's mean training loss and accuracy so far (Keras' running
figures), lr, and the last validation's headline loss and accuracy, from the moment it ends. Its
numbers come from what the loop has already read: on a GPU (or MPS) they change at log points,
where the records are read (trainer.log_every), since reading a step's loss sooner would make the
host wait for the device; on a CPU the step's loss is computed in host memory, so the bar reads
each step's own as it comes, at no cost to the run.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager, nullcontext

from runner.engine.run import Run


class Progress:
    """A run's live progress. `Progress.quiet(run)` shows no bar, only the log lines of its
    validations and epochs (the runs of a pack); `with Progress.shown(run, bar=...)` opens a bar
    or writes log lines."""

    def __init__(self, run: Run, bar=None):
        self.run, self.bar = run, bar
        # the steps since the last log point, as read on a CPU: Σ loss, Σ correct, steps, images
        self.unread = [0.0, 0, 0, 0]
        self.epoch_shown = 0
        self.val_counted = len(run.stats.val_times)  # validations before this epoch's
        self.postfix: dict[str, str] = {}

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
            shown.close()  # the last numbers stay visible: the final validation's among them

    # ------------------------------------------------------------ fed by the loop

    def step(self) -> None:
        """A step has run (its record is the newest pending one)."""
        if self.bar is None:
            return
        if self.run.device.type == "cpu":  # host memory: reading it waits for nothing
            r = self.run.stats.pending[-1]
            u = self.unread
            u[0], u[1] = u[0] + r.loss.item(), u[1] + int(r.correct.item())
            u[2], u[3] = u[2] + 1, u[3] + r.images
            self._train_figures(r.lr)
        self._epoch()
        self.bar.update(1)  # redraws at most every tqdm.mininterval

    def log_point(self, loss: float, lr: float | None) -> None:
        """The pending records have been read and written (their sums are in run.state)."""
        run, s = self.run, self.run.state
        self.unread = [0.0, 0, 0, 0]
        if self.bar is not None:
            self._train_figures(lr)
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
        """A validation has ended: its line, and its headline figures on the bar at once."""
        keys = ("val_acc_recal", "val_loss_recal", "val_acc_running", "val_loss_running")
        own = " ".join(f"{k} {rec[k]:.4f}" for k in keys if k in rec)
        headline = self.run.headline.key("val_acc")
        self.run.out.log.info(
            "step %d epoch %.2f %s (val_acc = %s)", rec["step"], rec["epoch"], own, headline
        )
        if self.bar is not None:
            loss, acc = self.run.headline.loss_acc(rec)
            self.postfix.update(val_loss=_figure(loss), val_acc=_figure(acc))
            self.bar.set_postfix(self.postfix)

    def epoch_end(self, rec: dict) -> None:
        """The epoch record has been written: one line, as Keras' fit prints per epoch."""
        times = self.run.stats.val_times[self.val_counted :]
        self.val_counted = len(self.run.stats.val_times)
        self.run.out.log.info(epoch_line(self.run, rec, sum(times) if times else None))

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

    # ------------------------------------------------------------ the bar's figures

    def _train_figures(self, lr: float | None) -> None:
        """The epoch's mean training loss and accuracy so far: the steps written at log points
        (run.state) and those read since (`unread`, CPU only)."""
        s, (loss, correct, steps, images) = self.run.state, self.unread
        steps, images = s.epoch_steps + steps, s.epoch_seen + images
        if steps:
            self.postfix["loss"] = f"{(s.epoch_loss_sum + loss) / steps:.3f}"
            self.postfix["acc"] = f"{(s.epoch_correct + correct) / images:.3f}"
        self.postfix["lr"] = "-" if lr is None else f"{lr:.2e}"
        self.postfix.setdefault("val_loss", "-")
        self.postfix.setdefault("val_acc", "-")
        self.bar.set_postfix(self.postfix, refresh=False)

    def _epoch(self) -> None:
        """The bar's description: the epoch the last step belongs to, of the run's epochs."""
        spe, s = self.run.steps_per_epoch, self.run.state
        epoch = -(-s.step // spe)
        if epoch != self.epoch_shown:
            self.epoch_shown = epoch
            self.bar.set_description(f"epoch {epoch}/{-(-self.run.total // spe)}", refresh=False)


def epoch_line(run: Run, rec: dict, val_s: float | None) -> str:
    """`epoch 3/30: train_loss 1.2034 train_acc 0.5612 | val_loss 1.1023 val_acc 0.6012 |
    41.5 s training (1203 images/s), 3.1 s validation`: the epoch's mean training loss, its
    `train_acc`, the headline of its last validation (none when it had none), and the time this
    process spent training and validating in it."""
    s, spe = run.state, run.steps_per_epoch
    epoch = rec["step"] // spe
    parts = [f"epoch {epoch}/{-(-run.total // spe)}:"]
    if s.epoch_steps:
        parts.append(f"train_loss {s.epoch_loss_sum / s.epoch_steps:.4f}")
    if "train_acc" in rec:
        parts.append(f"train_acc {rec['train_acc']:.4f}")
    last = s.last_val
    if last is not None and last["step"] > (epoch - 1) * spe:
        loss, acc = run.headline.loss_acc(last)
        at = "" if last["step"] == rec["step"] else f" (at epoch {last['epoch']:.2f})"
        parts.append(f"| val_loss {_figure(loss, 4)} val_acc {_figure(acc, 4)}{at}")
    seconds, images = rec["epoch_train_s"], rec["epoch_images"]
    rate = f" ({images / seconds:.0f} images/s)" if seconds > 0 else ""
    parts.append(f"| {seconds:.1f} s training{rate}")
    line = " ".join(parts)
    return line + (f", {val_s:.1f} s validation" if val_s is not None else "")


def _figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
