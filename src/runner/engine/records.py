"""What a run records: `metrics.jsonl` (the contract other tools read) and TensorBoard scalars.

metrics.jsonl holds one JSON object per record, always with `step` (optimizer steps done, int) and
`epoch` (float), plus whichever of these belong to it:
    train_loss   data loss of that step's batch (no L2 term)
    lr           lr_t = lr·η_t used by that step
    decay        d_t, the shrink θ ← θ·(1 − d_t) applied to the decayed weights (0 when none)
    l2_penalty   λ₂/2·‖θ‖² of the L2-regularized weights
    weight_norm  ‖θ‖ of the regularized weights (the ones `decay_on` selects)
    grad_norm    ‖∇ data loss‖ at that step (on logging steps)
The probes (runner.probes) add their figures to the log point's record: per stage
weight_norm/<stage>, weight_norm_si/<stage>, weight_norm_eq/<stage>, rotation/<stage>,
angular_diffusion/<stage>, angular_diffusion_pred, rotation_steps (probes.equilibrium);
angular_update_step/<stage>, angular_update_step_pred (probes.rotation); l2_grad_ratio/<stage>,
l2_update_ratio/<stage>, l2_dominant_share/<stage> (probes.l2_terms, Adam + L2).
Validation records (a record with `val_loss` is one), see runner.core.evaluation for the two
evaluations and runner.core.headline for their names:
    val_loss_running, val_acc_running   eval mode with BatchNorm's running statistics (Keras' and
                                        torch's number)
    val_loss_recal, val_acc_recal       eval mode after BatchNorm statistics are recomputed on
                                        training images (trainer.bn_recalibrate ≠ 0)
    val_loss, val_acc                   the headline: a copy of the recalibrated pair when there is
                                        one, else of the running pair (summary.json's `val_metric`
                                        says which)
    train_eval_loss_running, ...        the same on a fixed un-augmented training subset
                                        (trainer.train_eval=true), `_recal` twins and headline
                                        copies alike
    bn_staleness_*, bn_lag_*, bn_mismatch_*, val_loss_recal_aug, val_acc_recal_aug
                                        the running statistics against exact ones (a probe:
                                        runner.probes.bn_staleness)
    val_loss_shadow@m, bn_lag_rms<@m>/<stage>, bn_drift_mu/<stage>, ...
                                        shadow statistics and the chain's figures (a probe:
                                        runner.probes.shadow_bn)
Epoch records (one at each epoch end, a record with `epoch_train_s` is one):
    epoch_train_s, epoch_images         seconds spent training in that epoch in this process (the
                                        host waits for the device before reading the clock), and the
                                        images trained in them
    train_acc                           Σ correct / Σ images over the epoch's training batches, in
                                        train mode on the augmented batches as the steps saw them
                                        (what Keras prints per epoch)
A continued run first drops the records past its checkpoint's step (an earlier attempt wrote them
after it) and writes them again, so each record is in the file once; records are on disk before a
checkpoint is published.

TensorBoard: scalars grouped acc/, loss/, optim/ first, then the diagnostics (TB_TAGS: acc/val is
the headline val_acc, acc/val_running and acc/val_recal the two evaluations, acc/val_best the best
acc/val so far), and a Custom Scalars layout (LAYOUT). The run's hyperparameters go into its own
event files (HParams plugin) when it starts, so a running or killed run shows them too: its name,
the swept keys, then the study's (hparams_columns), the trial named by its run folder (trial_name);
its metric columns are the last values of HPARAMS_METRICS, and its status is written when it ends.
The keys are the same for every run of a sweep, so `tensorboard --logdir multirun/...` compares it
(not SummaryWriter.add_hparams, which makes a separate run per call: pytorch issue 32651).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from runner.config import flatten
from runner.engine.files import fsync_path, write_atomic

# TensorBoard's Time Series sorts the tags, groups them by what comes before the first "/" and opens
# the first two groups: accuracy and loss (training and validation side by side), then lr and decay;
# the diagnostics sort after them (running_stats: runner.probes.bn_staleness, time, weights)
TB_TAGS = {
    "train_acc": "acc/train",
    "val_acc": "acc/val",
    "val_acc_running": "acc/val_running",
    "val_acc_recal": "acc/val_recal",
    "train_eval_acc": "acc/train_eval",
    "train_eval_acc_running": "acc/train_eval_running",
    "train_eval_acc_recal": "acc/train_eval_recal",
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_loss_running": "loss/val_running",
    "val_loss_recal": "loss/val_recal",
    "train_eval_loss": "loss/train_eval",
    "train_eval_loss_running": "loss/train_eval_running",
    "train_eval_loss_recal": "loss/train_eval_recal",
    "lr": "optim/lr",
    "decay": "optim/decay",
    "grad_norm": "optim/grad_norm",
    "epoch_train_s": "time/epoch_train_s",
    "weight_norm": "weights/norm",
    "l2_penalty": "weights/l2_penalty",
}
BEST_ACC_TAG = "acc/val_best"  # the best headline val_acc so far
# the HParams tab's metric columns: the last value of scalars the run writes anyway (no single-point
# charts)
HPARAMS_METRICS = ("acc/val", BEST_ACC_TAG, "loss/val", "loss/train")
# HParams columns after the swept keys: what trained on what, then the study's keys
STUDY_KEYS = (
    *("model", "data", "batch_size", "seed"),
    *("optimizer", "lr", "wd", "l2", "reg", "schedule", "epochs"),
)
STUDY_KEYS += ("epochs",)
# the Custom Scalars tab: training and validation in one chart, and the two validations of BatchNorm
LAYOUT = {
    "headline": {
        "loss: training and validation": ["Multiline", ["^loss/train$", "^loss/val$"]],
        "accuracy: training and validation": ["Multiline", ["^acc/train$", "^acc/val$"]],
        "learning rate and decay per step": ["Multiline", ["^optim/lr$", "^optim/decay$"]],
    },
    "validation: BatchNorm running vs recalibrated statistics": {
        "loss": ["Multiline", ["^loss/val_running$", "^loss/val_recal$"]],
        "accuracy": ["Multiline", ["^acc/val_running$", "^acc/val_recal$"]],
    },
}


def hparams_columns(
    config: dict,
    choices: dict,
    swept: list[str],
    applied: dict | None = None,
) -> dict:
    """The HParams tab's columns: the run's `name`, the keys the sweep varies, then the study's
    keys, its `tags` (comma-separated), then `applied`; a config group (model, data, optimizer,
    schedule, ...) shows the preset it picked. Everything else stays in summary.json."""
    flat, out = flatten(config), {}
    for key in ["name", *swept, *STUDY_KEYS, "tags"]:
        value = choices.get(key, flat.get(key, flat.get(f"{key}.name")))
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        if key not in out and value not in (None, ""):
            out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return {**out, **(applied or {})}


def trial_name(run_dir: Path, name: str | None = None) -> str:
    """The HParams tab's trial: the run folder as the run prints it (relative to the current folder
    when below it), with the run's name after it when the folder does not hold it (hydra.run.dir
    given); TensorBoard would name it relative to --logdir, "." for a run opened alone."""
    path = Path(run_dir).absolute()
    below = Path.cwd() in path.parents
    shown = str(path.relative_to(Path.cwd())) if below else str(path)
    return shown if not name or name in shown else f"{shown} ({name})"


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class Recorder:
    """Appends records to metrics.jsonl and mirrors them as TensorBoard scalars in the run
    folder."""

    def __init__(
        self,
        run_dir: Path,
        resume_step: int = 0,
        histograms_every: int = 0,
        tensorboard: bool = True,
    ):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.best_acc = None  # BEST_ACC_TAG: the best headline val_acc so far
        # records past the checkpoint belong to a timeline the run is about to redo
        if self.path.exists():
            self._truncate(resume_step)
            for r in read_metrics(self.path):
                self._best(r)
        self.file = open(self.path, "a", encoding="utf-8")
        self.histograms_every = histograms_every
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard drops the earlier attempts' events past the checkpoint; this
            # run writes them anew
            self.tb = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step + 1)

    def _truncate(self, step: int) -> None:
        """Keep the complete records up to `step` (the checkpoint's), drop the rest, in one atomic
        replace."""
        kept = [
            r
            for r in read_metrics(self.path)
            if isinstance(r.get("step"), int) and r["step"] <= step
        ]
        data = "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8")
        write_atomic(self.path, data, durable=True)  # a link at metrics.jsonl.tmp is not followed

    def _best(self, record: dict) -> None:
        if isinstance(record.get("val_acc"), (int, float)) and math.isfinite(record["val_acc"]):
            self.best_acc = max(
                record["val_acc"], self.best_acc if self.best_acc is not None else -1.0
            )

    def write(self, record: dict) -> None:
        # NaN is not JSON: a non-finite value is stored as null (the summary says the run diverged)
        self.file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                tag = TB_TAGS.get(key) or (
                    f"weights/{key.split('/', 1)[1]}" if key.startswith("weight_norm/") else None
                )
                tag = tag or (f"running_stats/{key[3:]}" if key.startswith("bn_") else None)
                if tag and value is not None:
                    self.tb.add_scalar(tag, value, record["step"])
            self._best(record)
            if "val_acc" in record and self.best_acc is not None:
                self.tb.add_scalar(BEST_ACC_TAG, self.best_acc, record["step"])

    def histograms(self, model, step: int) -> None:
        if self.tb is not None and self.histograms_every and step % self.histograms_every == 0:
            for name, p in model.named_parameters():
                self.tb.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)

    def start(
        self,
        config: dict,
        choices: dict | None = None,
        swept: list[str] | None = None,
        applied: dict | None = None,
    ) -> None:
        """The run's hyperparameters (hparams_columns) into its own event file now, so TensorBoard's
        HParams tab lists the run while it trains (and after it is killed), and the Custom Scalars
        layout; `finish` adds the status. `applied`: the regularization as the step plan applies it,
        e.g. {"wd_applied": λ} (optimizer.wd_tau and wd_normalized set λ from other settings),
        columns after the others."""
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import custom_scalars

        hp = hparams_columns(config, choices or {}, swept or [], applied)
        # a name identifies the run: compared across single runs, it leads (a sweep's own does not)
        first = set(swept or []) or ({"name"} if config.get("name") else set())
        trial = trial_name(self.path.parent, config.get("name"))
        writer = self.tb._get_file_writer()
        for summary in _hparams_start(hp, first, trial):
            writer.add_summary(summary)
        writer.add_summary(custom_scalars(LAYOUT))
        self.tb.flush()

    def finish(self, summary: dict) -> None:
        """Write the run's status (HParams session end) into its own event file, then close."""
        if self.tb is not None:
            self.tb._get_file_writer().add_summary(_session_end(summary["status"]))
            self.tb.close()
        self.close()

    def sync(self, durable: bool = False) -> None:
        """Hand the records to the OS; `durable`: also onto the disk (fsync), as before a checkpoint
        is published, so that a kill right after it loses none of the records up to its step."""
        if not self.file.closed:
            self.file.flush()
            if durable:
                os.fsync(self.file.fileno())
        if self.tb is not None:
            self.tb.flush()
            for events in self.path.parent.glob("events.out.tfevents.*") if durable else ():
                fsync_path(events)

    def close(self) -> None:
        """Close metrics.jsonl; the TensorBoard writer stays open for `finish`."""
        if not self.file.closed:
            self.file.flush()
            self.file.close()


def _hparams_start(hp: dict, swept: set, trial: str) -> list:
    """The HParams plugin's experiment (its columns: a key in `swept` `differs`, so TensorBoard
    lists and ticks it first) and the run's session start, in the group `trial` (the trial's name
    there)."""
    from google.protobuf.struct_pb2 import Value
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionStartInfo

    infos, values = [], {}
    for k, v in hp.items():
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        kind = "BOOL" if isinstance(v, bool) else "FLOAT64" if number else "STRING"
        data_type = api_pb2.DataType.Value(f"DATA_TYPE_{kind}")
        infos.append(api_pb2.HParamInfo(name=k, type=data_type, differs=k in swept))
        field = {"BOOL": "bool_value", "FLOAT64": "number_value", "STRING": "string_value"}[kind]
        values[k] = Value(**{field: v})
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in HPARAMS_METRICS]
    columns = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    experiment = HParamsPluginData(experiment=columns)
    start = HParamsPluginData(session_start_info=SessionStartInfo(hparams=values, group_name=trial))
    return [
        _hparams_summary(metadata.EXPERIMENT_TAG, experiment),
        _hparams_summary(metadata.SESSION_START_INFO_TAG, start),
    ]


def _session_end(status: str):
    """The HParams plugin's end-of-session record: success for a completed run, failure for a
    diverged or failed one, unknown for an interrupted one (it may continue)."""
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    code = {"completed": "STATUS_SUCCESS", "interrupted": "STATUS_UNKNOWN"}.get(
        status, "STATUS_FAILURE"
    )
    end = SessionEndInfo(status=Status.Value(code))
    return _hparams_summary(SESSION_END_INFO_TAG, HParamsPluginData(session_end_info=end))


def _hparams_summary(tag: str, content):
    """A Summary carrying the HParams plugin's `content` (HParamsPluginData) under `tag`."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME

    content.version = PLUGIN_DATA_VERSION
    data = SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=data))])


def read_metrics(path: Path) -> list[dict]:
    """All complete records of a metrics.jsonl (a half-written, foreign or undecodable line is
    skipped)."""
    out = []
    for line in Path(path).read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # JSON's errors and UnicodeDecodeError
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
