"""The per-step angle (probes.rotation) against Kosson et al.'s equilibrium prediction
(probes.theory)."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_cfg

from runner.config import validate
from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer
from runner.engine.records import read_metrics
from runner.engine.train import train
from runner.probes import LogPoint, StepPoint, Subject
from runner.probes.rotation import StepAngle, stage_angle, stage_angles, step_sums
from runner.probes.theory import equilibrium_norm, long_run_shrink, step_angle


def test_stage_angle_from_three_sums():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    assert stage_angle(1.0, 9.0, float((b - a).pow(2).sum())) == pytest.approx(math.pi / 2)
    small = 1e-4  # where acos of a float32 dot product would read 0
    c = torch.tensor([math.cos(small), math.sin(small)], dtype=torch.float64) * 2
    diff_sq = float((c - a.double()).pow(2).sum())
    assert stage_angle(1.0, 4.0, diff_sq) == pytest.approx(small, rel=1e-6)
    assert stage_angle(0.0, 1.0, 1.0) is None


def test_a_stage_is_one_vector_of_its_tensors():
    prev = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])]
    now = [torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0])]  # 90° and 0°
    sums = step_sums(prev, now)
    assert sums.tolist() == [[1.0, 4.0], [1.0, 4.0], [pytest.approx(2.0), 0.0]]
    both = stage_angles(sums, {"s": [0, 1], "first": [0]})
    assert both["angular_update_step/first"] == pytest.approx(math.pi / 2)
    # the concatenation (1, 0, 0, 2) → (0, 1, 0, 2): cos = 4/5
    assert both["angular_update_step/s"] == pytest.approx(math.acos(4 / 5))


def scale_invariant_loss(w: torch.Tensor) -> torch.Tensor:
    """Each row normalised (a conv's output channel before BatchNorm), against a fresh random
    target: the gradient is orthogonal to every row and independent from step to step, Kosson et
    al.'s random walk."""
    return (w / w.norm(dim=1, keepdim=True) * torch.randn_like(w)).sum()


def toy_angles(opt, w, steps: int, decoupled: float = 0.0) -> list[float]:
    """The per-step angle of w over the second half of `steps` optimizer steps, from a copy of
    θ_{k−1}."""
    angles = []
    for k in range(steps):
        opt.zero_grad()
        scale_invariant_loss(w).backward()
        prev = [w.detach().clone()]
        with torch.no_grad():
            w.mul_(1 - decoupled)  # SGD with decoupled decay: θ·(1 − d) before the update
        opt.step()
        if k >= steps // 2:
            angle = stage_angles(step_sums(prev, [w.detach()]), {"w": [0]})
            angles.append(angle["angular_update_step/w"])
    return angles


def rms(xs: list[float]) -> float:
    return math.sqrt(sum(x * x for x in xs) / len(xs))


@pytest.mark.parametrize("rule", ["adamw", "sgd_l2", "sgdw"])
def test_the_scale_invariant_toy_turns_at_the_predicted_angle_per_step(rule):
    """AdamW √(2ηλ(1−β1)/(1+β1)) and SGD + L2 √(2ηλ/(1+μ)) (epfml/REQ's adamw_etar_func,
    sgdm_etar_func), SGD with decoupled d: √(2d(1−μ)/(1+μ)); all 0.0229 here, 4.36× below the
    long-run √(2·d_eff) = 0.1."""
    torch.manual_seed(0)
    rows, cols, beta = 8, 256, 0.9
    w = torch.nn.Parameter(torch.randn(rows, cols))
    decoupled = 0.0
    if rule == "adamw":
        lr, wd = 1e-2, 0.5
        opt = torch.optim.AdamW([w], lr=lr, weight_decay=wd, betas=(beta, 0.999))
        d_eff = long_run_shrink("adam", lr * wd, lr, 0.0, beta)
        with torch.no_grad():  # start at the equilibrium norm: test the angle, not the approach
            w.mul_(equilibrium_norm(lr, d_eff, rows * cols) / w.norm())
    elif rule == "sgd_l2":
        lr, l2 = 0.1, 5e-3
        opt = torch.optim.SGD([w], lr=lr, momentum=beta, weight_decay=l2)
        d_eff = long_run_shrink("sgd", 0.0, lr, l2, beta)
    else:
        lr, decoupled = 0.1, 5e-3
        opt = torch.optim.SGD([w], lr=lr, momentum=beta)
        d_eff = long_run_shrink("sgd", decoupled, lr, 0.0, beta)
    assert d_eff == pytest.approx(5e-3)  # τ = 200 steps; the norm settles in ≈ 1/(2·d_eff) = 100
    measured = rms(toy_angles(opt, w, 1000, decoupled))
    assert measured / step_angle(d_eff, beta) == pytest.approx(1.0, abs=0.03)
    assert measured / math.sqrt(2 * d_eff) == pytest.approx(0.229, abs=0.01)


class ConvBN(torch.nn.Module):
    """A conv that BatchNorm follows (scale-invariant) and a linear head (not), in two stages."""

    STAGES = ("body", "head")

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_the_probe_measures_the_step_before_each_log_point_and_predicts_kossons_angle():
    torch.manual_seed(0)
    model = ConvBN()
    opt = Optimizer(model, algorithm="adam", betas=(0.9, 0.999))
    steps, lr, d = 9, 1e-2, 0.05
    plan = StepPlan(None, d, 0.0, None, [lr] * steps, [d] * steps, steps_per_epoch=steps)
    stages = {"body": torch.tensor([0]), "head": torch.tensor([1])}
    probe = StepAngle(Subject(model, opt, plan, None, stages, lambda: None))
    assert probe.facts()["body"]["counted"] == ["body.0.weight"]
    assert probe.facts()["head"]["share"] == 0.0
    log_points = {3, 4, 8}
    for k in range(1, steps + 1):
        kept = model.body[0].weight.detach().clone()
        F.cross_entropy(model(torch.randn(16, 3, 6, 6)), torch.randint(0, 4, (16,))).backward()
        opt.apply(lr, opt.keep_value(d))
        opt.zero_grad()
        probe.after_step(StepPoint(k, k in log_points, k + 1 in log_points))
        if k in log_points:
            point = LogPoint(k, opt.weight_norms(), None)
            values = {key: v.tolist() for key, v in probe.at_log(point).items()}
            f = probe.read_log(values, point)
            now = model.body[0].weight.detach()
            expected = stage_angles(step_sums([kept], [now]), {"body": [0]})
            assert f["angular_update_step/body"] == pytest.approx(
                expected["angular_update_step/body"], rel=1e-5
            )
            assert "angular_update_step/head" not in f
            assert f["angular_update_step_pred"] == pytest.approx(math.sqrt(2 * d * 0.1 / 1.9))
    assert probe.at_log(LogPoint(9, opt.weight_norms(), None)) == {}  # not a log point


def test_a_run_on_synthetic_images_turns_at_kossons_angle_in_every_bn_followed_stage(tmp_path):
    """The synthetic stand-in of the real-image check (docs/evaluation.md): ResNet8v1 under AdamW
    with a constant lr and d = 0.05 (τ = 20 steps) reaches equilibrium within ≈ 1/(2d) = 10 steps of
    its start; from step 100 on every stage's measured angle per step sits at Kosson et al.'s
    √(2d(1 − β1)/(1 + β1)) = 0.0725."""
    cfg = validate(
        compose_cfg(
            *TINY,
            "model.depth=8",
            "optimizer=adamw",
            "optimizer.wd_scaling=none",
            "wd=0.05",
            "lr=2e-3",
            "schedule.milestones=[]",
            "schedule.factors=[]",
            "batch_size=16",
            "epochs=5",
            "data.n_train=512",
            "trainer.log_every=4",
            "trainer.bn_recalibrate=0",
        )
    )
    train(cfg, tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    late = [r for r in records if r["step"] > 100 and "angular_update_step_pred" in r]
    assert len(late) == 15
    assert late[0]["angular_update_step_pred"] == pytest.approx(math.sqrt(2 * 0.05 * 0.1 / 1.9))
    for stage in ("stem", "stages.0", "stages.1", "stages.2"):
        ratios = [r[f"angular_update_step/{stage}"] / r["angular_update_step_pred"] for r in late]
        assert 0.75 < sum(ratios) / len(ratios) < 1.33, stage
        assert sum(0.5 < x < 2 for x in ratios) >= 0.8 * len(ratios), stage
