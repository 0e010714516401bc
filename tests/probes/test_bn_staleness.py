"""BatchNorm staleness: running statistics against the exact ones recalibration computes
(runner.probes.bn_staleness)."""

import json
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runner.core.evaluation import batch_norms, bn_statistics, recalibrated_bn
from runner.core.models import build_resnet
from runner.probes import Subject, ValidationPoint
from runner.probes.bn_staleness import (
    AugmentedReference,
    BNStaleness,
    bn_stages,
    layer_offsets,
    staleness_figures,
)


def measured(model, running, clean, aug, loss):
    """The probe at a validation whose recalibration used `clean` (its statistics as the probe gets
    them)."""
    with recalibrated_bn(model, clean, nullcontext()):
        point = ValidationPoint(0, running, bn_statistics(model), lambda: (torch.tensor(loss),) * 2)
        subject = Subject(model, None, None, nullcontext(), {}, lambda: aug)
        return BNStaleness(subject, AugmentedReference(subject)).at_validation(point)


def test_layer_offsets_on_hand_made_statistics():
    model = nn.Sequential(nn.BatchNorm2d(2, eps=0.0))
    running = [(torch.tensor([1.0, 3.0]), torch.tensor([4.0, 1.0]))]
    reference = [(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0]))]
    mu, logvar = layer_offsets(model, running, reference)
    # |Δμ| in units of the reference's std
    assert mu.tolist() == [pytest.approx((1 / 1 + 2 / 2) / 2)]
    assert logvar.tolist() == [pytest.approx(math.log(4))]  # |log 4| and |log 1/4|


def test_figures_take_mean_and_max_over_layers_and_mean_per_stage():
    model = build_resnet(8, 1)  # stem 1 BN, stages.0-2 2 BN each: 7 layers
    stages = bn_stages(model)
    assert stages == ["stem"] + ["stages.0"] * 2 + ["stages.1"] * 2 + ["stages.2"] * 2
    clean = bn_statistics(model)
    # layer i off by i+1 std
    shifted = [(mean + (i + 1) * var.sqrt(), var) for i, (mean, var) in enumerate(clean)]
    eps = batch_norms(model)[0].eps
    f = staleness_figures({"running": shifted, "clean": clean}, model)
    scale = 1 / math.sqrt(1 + eps)  # fresh BN: var 1
    assert f["bn_staleness_mu_mean"].item() == pytest.approx(4 * scale)  # mean of 1..7
    assert f["bn_staleness_mu_max"].item() == pytest.approx(7 * scale)
    assert f["bn_staleness_mu/stages.1"].item() == pytest.approx(4.5 * scale)  # layers 4, 5
    assert f["bn_staleness_logvar_mean"].item() == 0
    # no augmented reference: no such pairs
    assert not any(k.startswith(("bn_lag", "bn_mismatch")) for k in f)


def trained(momentum: float, steps: int = 8, seed: int = 0):
    """ResNet8 after `steps` SGD steps on random images; returns (model, clean images, augmented
    images)."""
    torch.manual_seed(seed)
    model = build_resnet(8, 1, bn_momentum=momentum)
    x, y = torch.randn(64, 3, 32, 32) * 2 + 0.5, torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for k in range(steps):
        xb = x[(k * 16) % 64 :][:16]
        loss = F.cross_entropy(model(xb.flip(3) if k % 2 else xb), y[(k * 16) % 64 :][:16])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, x[:32], x[:32].flip(3).roll(2, dims=2)


def test_staleness_is_exactly_zero_right_after_recalibrations_statistics_are_copied_in():
    model, clean, aug = trained(0.01)
    with recalibrated_bn(model, clean, nullcontext()):
        exact = bn_statistics(model)
    with torch.no_grad():
        for m, (mean, var) in zip(batch_norms(model), exact):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    running = bn_statistics(model)
    f = measured(model, running, clean, aug, 1.0)
    assert f["bn_staleness_mu_mean"].item() == 0.0 and f["bn_staleness_mu_max"].item() == 0.0
    assert (
        f["bn_staleness_logvar_mean"].item() == 0.0 and f["bn_staleness_logvar_max"].item() == 0.0
    )
    assert f["bn_lag_mu_mean"].item() > 0  # the augmented reference differs from the clean one ...
    # ... by the mismatch alone: the same log ratio of variances (μ offsets differ only in whose std
    # divides)
    assert f["bn_lag_logvar_mean"].item() == pytest.approx(
        f["bn_mismatch_logvar_mean"].item(), rel=1e-5
    )
    assert f["bn_lag_mu_mean"].item() == pytest.approx(f["bn_mismatch_mu_mean"].item(), rel=0.05)
    assert f["val_loss_recal_aug"].item() == 1.0
    # leaving the augmented recalibration put the clean reference back, and leaving the clean one
    # the running
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(bn_statistics(model), running)
    )


def test_running_statistics_with_a_smaller_momentum_are_staler():
    figures = {}
    for momentum in (0.01, 0.1):
        model, clean, aug = trained(momentum)
        f = measured(model, bn_statistics(model), clean, aug, 0.0)
        figures[momentum] = {k: v.item() for k, v in f.items()}
    for key in (
        "bn_staleness_mu_mean",
        "bn_staleness_logvar_mean",
        "bn_lag_mu_mean",
        "bn_lag_logvar_mean",
    ):
        assert figures[0.01][key] > 1.5 * figures[0.1][key], key
    # the mismatch compares two exact references: it does not depend on how the running averages are
    # kept
    assert figures[0.01]["bn_mismatch_mu_mean"] == pytest.approx(
        figures[0.1]["bn_mismatch_mu_mean"], rel=0.5
    )


def test_a_training_run_records_staleness_at_every_validation(tmp_path):
    from conftest import TINY, compose_cfg

    from runner.config import validate
    from runner.engine.train import train

    cfg = validate(
        compose_cfg(
            *TINY,
            "data.n_train=128",
            "data.n_val=64",
            "trainer.max_steps=4",
            "trainer.val_every=2",
            "batch_size=32",
            "trainer.bn_recalibrate=64",
            "probes.bn_staleness=true",
        )
    )
    train(cfg, tmp_path)
    vals = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in line
    ]
    assert len(vals) == 2
    for r in vals:
        for key in (
            "bn_staleness_mu_mean",
            "bn_lag_logvar_max",
            "bn_mismatch_mu/stem",
            "val_loss_recal_aug",
        ):
            assert isinstance(r[key], float) and r[key] >= 0, key
    # the same run's log points carry the equilibrium figures (probes.equilibrium), its summary the
    # timescale
    logs = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "rotation" in line
    ]
    assert logs and all(
        r["rotation/stages.1"] > 0 and r["weight_norm_eq/stages.1"] > 0 for r in logs
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["timescale"]["tau_steps"] > 0
