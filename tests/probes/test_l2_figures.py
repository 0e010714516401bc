"""The L2 figures under Adam + L2 (probes.l2_figures) at the three test points of known answer."""

import math

import pytest
import torch

from runner.probes.l2_figures import l2_dominant_counts, l2_update_sums, stage_figures

N, BETA2, STEP = 10_000, 0.999, 5000


def figures(theta, v_hat, grad, l2):
    """Both figures of one tensor whose Adam state has bias-corrected second moment v_hat."""
    exp_avg_sq = v_hat * (1 - BETA2**STEP)  # what Adam stores: v̂ before the bias correction
    sums = l2_update_sums([theta], [exp_avg_sq], STEP, BETA2, 1e-8, l2)
    counts = l2_dominant_counts([theta], torch.stack([grad.pow(2).sum()]), l2)
    return stage_figures(sums, counts, {"s": [0]}, {"s": theta.numel()})


def old_sign_fraction(theta, v_hat, l2):
    """l2_sign_fraction as the runner computed it: the share with (λ₂θ)² > v̂."""
    return ((l2 * theta).pow(2) > v_hat).float().mean().item()


def test_the_three_test_points_on_a_hand_made_adam_state():
    torch.manual_seed(0)
    theta = torch.where(torch.rand(N) < 0.5, -1.0, 1.0)
    noise = torch.randn(N)  # the data gradient's noise, σ = 1
    # L2 dominant, c/σ = 10: v̂ = c² + σ², the update is 0.995 of a sign step
    f = figures(theta, torch.full((N,), 101.0), noise, l2=10.0)
    assert f["l2_update_ratio/s"] == pytest.approx(10 / math.sqrt(101))
    assert f["l2_dominant_share/s"] == 1.0
    assert old_sign_fraction(theta, torch.full((N,), 101.0), 10.0) == 0.0  # the figure it replaces
    # the data gradient opposing L2: g = −λ₂θ + noise, so Adam sees noise alone, v̂ = σ²
    f = figures(theta, torch.full((N,), 1.0), -10.0 * theta + noise, l2=10.0)
    assert f["l2_update_ratio/s"] == pytest.approx(10.0)  # > 1: only a cancelling gradient
    assert f["l2_dominant_share/s"] == 0.0
    assert old_sign_fraction(theta, torch.full((N,), 1.0), 10.0) == 1.0
    # L2 negligible, c/σ = 0.01
    f = figures(theta, torch.full((N,), 1.0001), noise, l2=0.01)
    assert f["l2_update_ratio/s"] == pytest.approx(0.01, rel=1e-3)
    assert f["l2_dominant_share/s"] == 0.0


@pytest.mark.parametrize("opposing,ratio", [(False, 10 / math.sqrt(101)), (True, 10.0)])
def test_the_ratio_on_the_state_torch_s_adam_builds(opposing, ratio):
    """Adam with lr = 0 keeps θ fixed while its second moment averages (g + λ₂θ)² over 3,000
    steps."""
    torch.manual_seed(1)
    n, l2 = 2000, 10.0
    theta = torch.nn.Parameter(torch.where(torch.rand(n) < 0.5, -1.0, 1.0))
    adam = torch.optim.Adam([theta], lr=0.0, betas=(0.9, BETA2))
    for _ in range(3000):
        data = torch.randn(n) - (l2 * theta.detach() if opposing else 0.0)
        theta.grad = data + l2 * theta.detach()  # core.update_rule's L2: added before Adam sees it
        adam.step()
    st = adam.state[theta]
    sums = l2_update_sums([theta.detach()], [st["exp_avg_sq"]], float(st["step"]), BETA2, 1e-8, l2)
    counts = l2_dominant_counts([theta.detach()], torch.stack([data.pow(2).sum()]), l2)
    f = stage_figures(sums, counts, {"s": [0]}, {"s": n})
    assert f["l2_update_ratio/s"] == pytest.approx(ratio, rel=0.05)
    assert f["l2_dominant_share/s"] == (0.0 if opposing else 1.0)
