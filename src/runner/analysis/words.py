"""The report's words: its columns named as a researcher says them, what each name means
(report.md's "What the names mean"), and the sentences around its tables and figures.

The names are the report's; runs.csv and configs.csv keep the keys of summary.json and
metrics.jsonl, and each definition names its key, so a reader can go from one to the other.
"""

from __future__ import annotations

# column headers in words; "What the names mean" in report.md defines each (TERMS); the oscillation
# columns# without a suffix are of the running-statistics series (runner.analysis.oscillation)
TABLE_STATS = {
    "best_val_acc": "best val acc",
    "final_val_acc": "final val acc",
    "final_val_loss": "final val loss",
    "test_acc_selected": "test acc of best.pt",
    "dispersion": "loss scatter (running)",
    "dispersion_recal": "loss scatter (recal)",
    "dispersion_bias": "scatter's bias",
    "gap_share": "scatter from BN statistics",
    "acc_sampling_error": "accuracy sampling error",
    "val_every_steps": "steps between validations",
    "tv_per_epoch": "loss swing per epoch (running)",
    "tv_per_epoch_recal": "loss swing per epoch (recal)",
    "recal_removed_share": "swing removed by recal",
    "max_rise_rel": "largest rise (running)",
    "n_rises": "rises (running)",
    "epochs_to_92": "epochs to 92 %",
    "gen_gap": "val − train loss (running)",
}
STALENESS_STATS = {
    "dispersion": "loss scatter (running)",
    "dispersion_recal": "loss scatter (recal)",
    "gap_share": "scatter from BN statistics",
    "gap_lag_mean": "BN gap from lag",
    "gap_mismatch_mean": "BN gap from augmentation",
    "bn_staleness_mu": "BN staleness",
    "bn_lag_mu": "BN lag",
    "angular_update_step_mid": "rotation/step",
    "angular_update_step_pred_mid": "predicted rotation/step",
}
EVALUATION_WORDS = {
    "recal": "recalibrated BN statistics",
    "running": "running BN statistics",
    "headline": "each run's headline BN statistics",
}
SELECTED_WORDS = {"test": "selected on test", "val_split": "selected on a held-out split"}
CHOSEN = {
    "test": (
        "selected on the test split: a run that validates more than once keeps its best validation "
        "on the very images it is reported on, so slightly optimistic"
    ),
    "val_split": (
        "selected on a split held out of the training images; test acc of best.pt is the chosen "
        "checkpoint on the test split"
    ),
}

# "What the names mean": each term once, in the words of the tables (report.md lists those it uses)
TERMS = {
    "configuration": (
        "the settings a run trains with, seed aside: runs that differ only in `seed` are one "
        "configuration, and its numbers are the mean over its completed runs with its 95 % "
        "interval (mean ± sample standard deviation in configs.csv and the heat map)"
    ),
    "n": (
        "how many runs of a configuration completed (the means are over them); runs that stopped "
        "otherwise are counted in brackets (diverged, interrupted, running, not started)"
    ),
    "best val acc": (
        "a run's highest validation accuracy over all its validations (summary.json "
        "`best_val_acc`); **final val acc** and **final val loss** are those of its last "
        "validation"
    ),
    "running": (
        "evaluated with BatchNorm's running statistics, the averages `model.eval()` uses (the "
        "number Keras and PyTorch report)"
    ),
    "recal": (
        "evaluated after recomputing every BatchNorm's statistics on training images just before "
        "the validation (`trainer.bn_recalibrate`); a run's headline is recal when it has it "
        "(docs/evaluation.md)"
    ),
    "selected on": (
        "which images chose the best validation: the test split when the run validates on it (the "
        "best of several looks at the same images, so slightly optimistic), or a split held out of "
        "the training images (`data.val_split`), whose best checkpoint is then measured once on "
        "the test split: **test acc of best.pt**"
    ),
    "accuracy sampling error": (
        "√(a(1 − a)/N), a the mean accuracy and N the validation images: the standard error of an "
        "accuracy against a new set of N images, what separates two configurations by chance; two "
        "validations of one set by the same weights agree exactly, so it is not the floor of the "
        "scatter between validations, whose floor is the recalibrated series' own "
        "(`acc_sampling_error`)"
    ),
    "steps between validations": "the median number of optimizer steps between two validations",
    "loss swing per epoch": (
        "how far the validation loss moves up and down per epoch: the sum of |change| between "
        "consecutive validations over the epochs they span (`tv_per_epoch` in runs.csv)"
    ),
    "swing removed by recal": (
        "1 − swing (recal) / swing (running): the share of the swing that is BatchNorm's running "
        "statistics lagging the weights"
    ),
    "largest rise": (
        "the largest rise of the validation loss above its lowest value so far, as a fraction of "
        "that value (0.2: 20 % above; `max_rise_rel`)"
    ),
    "rises": (
        "how many times the validation loss went more than the rise threshold (10 % unless "
        "`--threshold`) above its lowest value so far (`n_rises`)"
    ),
    "loss scatter": (
        "how far one validation's loss sits off its local trend (the median of its neighbours "
        "within 2 epochs), as a typical log factor (0.25: ×/÷ 1.28); unlike the swing it barely "
        "grows with how often a run validates, but it reads high by its bias and needs at least "
        "one validation every 2 epochs (`dispersion`)"
    ),
    "scatter's bias": (
        "how much higher the loss scatter reads than the noise's own std at this run's "
        "validations per epoch, by simulation of white noise: +13 % at one an epoch, +7 % at two, "
        "+4 % at three (`dispersion_bias`)"
    ),
    "scatter from BN statistics": (
        "the running − recalibrated gap's share of the scatter's variance, Σ g²/(Σ g² + Σ r²) of "
        "the detrended gap g and recalibrated residual r, in [0, 1] (`gap_share`; "
        "`gap_recal_corr` in runs.csv says how far the two parts are from independent)"
    ),
    "epochs to 92 %": "the first validation at which the accuracy reached 0.92",
    "val − train loss": (
        "the last validation loss minus the training images' loss in eval mode, or minus the last "
        "epoch's training loss where that was not measured (`gen_gap`)"
    ),
}
TERMS |= {
    "decay timescale": (
        "τ/T: the decay's memory τ = 1 / mean d_t, in steps, as a fraction of the run's steps "
        "(`tau_fraction`; `optimizer.wd_tau` sets λ from it), and beside it Wang & Aitchison's τ "
        "= 1/(η_peak·λ) in epochs (`tau_epoch_wa`; they advise at least one epoch); under cosine "
        "the first is about 2.1 × the second; λ₂ instead for L2 alone, which has no decay"
    ),
    "wd": (
        "the decoupled decay λ the run applied (summary.json `applied`: `optimizer.wd_tau` sets it "
        "from τ/T, so it is not the configured `wd`); **l2** likewise λ₂"
    ),
    "BN gap from lag": (
        "mean over validations of the running loss minus the loss with BatchNorm's statistics "
        "recomputed on augmented training images: the part of the running − recalibrated gap that "
        "is the running averages lagging the weights (`gap_lag_mean`)"
    ),
    "BN gap from augmentation": (
        "the rest of that gap, which the augmentation makes: the statistics of augmented training "
        "images against those of clean ones (`gap_mismatch_mean`)"
    ),
    "BN staleness": (
        "how far BatchNorm's running means sit from the exact means on training images, in "
        "standard deviations, averaged over layers and validations (`bn_staleness_mu`)"
    ),
    "BN lag": "the same against the means on augmented images: the lag alone (`bn_lag_mu`)",
    "rotation/step": (
        "the angle in radians that the scale-invariant weights of the BatchNorm-followed stages "
        "turn in one step, measured in the middle third of the run (`angular_update_step_mid`)"
    ),
    "predicted rotation/step": (
        "√(2d(1 − β)/(1 + β)), d the per-step decay and β Adam's β1 or SGD's momentum: the angle "
        "per step at which decay and updates balance (Kosson et al.; "
        "`angular_update_step_pred_mid`)"
    ),
}
ALWAYS_TERMS = ("configuration", "n", "best val acc", "running", "recal", "selected on")
CONFIGURATIONS_NOTE = (
    "The mean over completed runs with its 95 % interval in brackets (Student t; none for one run)."
)
FREQUENCY_NOTE = (
    "The loss swing, the largest rise, the rises and the swing removed by recalibration grow with "
    "how often a run validates: compare them only at equal steps between validations; the loss "
    "scatter does not (docs/reports.md)."
)
STALENESS_NOTE = (
    "Per configuration (the mean over seeds with its 95 % interval): how much of the validation "
    "loss's scatter is BatchNorm's running statistics, where the running − recalibrated gap comes "
    "from, how stale the statistics are, and the measured rotation per step against the "
    "equilibrium's (docs/reports.md)."
)
# (file, title, how to read it) of the report's figures; report.md shows each under its title
FIGURE_WORDS = {
    "val_curves.png": (
        "Validation loss and accuracy",
        "One line per configuration: the mean over its seeds, in a band from lowest to highest.",
    ),
    "weight_norm.png": (
        "Weight norm",
        "The norm of the decayed weights through training, per configuration.",
    ),
    "heatmap.png": (
        "Best validation accuracy over two swept settings",
        "Each cell: mean ± standard deviation over its seeds, and n. The colours span at least ± "
        "three times the noise, so cells closer than chance alone makes look alike.",
    ),
    "oscillation.png": (
        "Oscillation of the validation loss vs decay strength",
        "Solid: running BatchNorm statistics; dashed with open markers: recalibrated. The gap "
        "between them is the part of the oscillation that is BatchNorm's running statistics "
        "lagging the weights.",
    ),
    "chain.png": (
        "The chain from decay to the oscillation, link by link",
        "One point per log point (a) or validation (b-d) of every run; colour: stage (a, b) or "
        "statistics set (c, d); hollow: left out of the fits (outside the middle third, in an "
        "EMA's warm-up); dashed: measured = predicted.",
    ),
    "staleness.png": (
        "Loss scatter and BatchNorm staleness vs rotation per step",
        "One point per configuration (seed means), named beside it. Colour: optimizer; marker: "
        "BatchNorm momentum; hollow: recalibrated statistics.",
    ),
}


def plural(n: int, word: str) -> str:
    """`1 run`, `2 runs`."""
    return f"{n} {word}{'' if n == 1 else 's'}"
