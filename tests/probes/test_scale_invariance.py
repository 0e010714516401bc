"""Which kernels are scale-invariant (probes.scale_invariance), checked against the definition:
scale one kernel and see whether the training-mode output moves."""

import pytest
import torch

from runner.core.models.resnet import build_resnet
from runner.probes.scale_invariance import eps_share, scale_invariant_kernels, stage_invariance


def invariant_by_scaling(model, name: str, x: torch.Tensor) -> bool:
    """The definition: the logits in training mode (batch statistics) do not move when the kernel is
    tripled."""
    p = dict(model.named_parameters())[name]
    with torch.no_grad():
        before = model(x)
        p.mul_(3.0)
        after = model(x)
        p.div_(3.0)
    return torch.allclose(after, before, rtol=1e-3, atol=1e-3 * before.abs().max().item())


@pytest.mark.parametrize("depth,version", [(20, 1), (20, 2)])
def test_the_traced_rule_agrees_with_scaling_each_kernel(depth, version):
    torch.manual_seed(0)
    model = build_resnet(depth, version).train()
    x = torch.randn(8, 3, 32, 32)
    found = set(scale_invariant_kernels(model))
    kernels = [n for n, p in model.named_parameters() if p.ndim > 1]
    assert {n for n in kernels if invariant_by_scaling(model, n, x)} == found


def test_which_kernels_of_v1_and_v2_are_invariant():
    v1 = set(scale_invariant_kernels(build_resnet(20, 1)))
    assert "stem.0.weight" in v1 and "stages.1.0.conv2.weight" in v1
    assert "stages.1.0.shortcut.weight" not in v1 and "head.2.weight" not in v1
    v2 = set(scale_invariant_kernels(build_resnet(20, 2)))
    assert {"stages.0.0.conv1.weight", "stages.0.0.conv2.weight"} <= v2
    assert not {"stages.0.0.conv3.weight", "stages.0.0.shortcut.weight", "head.4.weight"} & v2


@pytest.mark.parametrize(
    "depth,version,shares",
    [
        (20, 1, {"stem": 1, "stages.0": 1, "stages.1": 50688 / 51200, "stages.2": 202752 / 204800}),
        (56, 1, {"stages.0": 1, "stages.1": 161280 / 161792, "stages.2": 645120 / 647168}),
        (20, 2, {"stem": 1, "stages.0": 0.6571, "stages.1": 86016 / 110592, "stages.2": 0.7778}),
        (56, 2, {"stages.0": 19200 / 26368, "stages.1": 266240 / 323584, "stages.2": 0.8228}),
    ],
)
def test_the_invariant_share_of_each_stage(depth, version, shares):
    stages = stage_invariance(build_resnet(depth, version))
    assert stages["head"]["share"] == 0.0 and stages["head"]["invariant"] == []
    for stage, share in shares.items():
        assert stages[stage]["share"] == pytest.approx(share, abs=1e-4)
    if (depth, version) == (56, 2):  # conv3 and the projections: 18-27 % of each stage
        assert all(0.72 < stages[s]["share"] < 0.83 for s in ("stages.0", "stages.1", "stages.2"))
    n = (depth - 2) // (6 if version == 1 else 9)
    per_block = 2  # v1: conv1, conv2; v2: conv1, conv2
    assert len(stages["stages.1"]["invariant"]) == n * per_block


def test_eps_share_says_how_far_batchnorm_is_from_scale_invariant():
    bn = torch.nn.BatchNorm1d(2, eps=1e-3).train()
    z = torch.randn(4096, 2) * torch.tensor([1.0, 0.03])  # input variances 1 and 9e-4 ≈ ε
    share = eps_share(z.var(0), 1e-3)
    assert share[0] == pytest.approx(1e-3, rel=0.1) and share[1] == pytest.approx(0.53, abs=0.05)
    with torch.no_grad():  # halve the kernel: the wide channel keeps its output, the narrow one not
        moved = (bn(z * 0.5) - bn(z)).abs().mean(0)
    assert moved[0] < 5e-3 < 0.1 < moved[1]
