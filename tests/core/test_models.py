import math
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from runner.core.models import MODELS, build_resnet
from runner.core.models.resnet import Bottleneck, Conv

# Trainable / total (trainable + BN moving mean/var) parameter counts from Keras 3.15.1 (torch
# backend), as model.summary() reports them (sums over model.trainable_weights / model.weights), for
# the resnet_v1 / resnet_v2 builders of the Keras example examples/cifar10_resnet.py, input (32, 32,
# 3), num_classes=10.
KERAS_COUNTS = {
    "resnet20v1": (273_066, 274_442),
    "resnet32v1": (467_946, 470_218),
    "resnet44v1": (662_826, 665_994),
    "resnet56v1": (857_706, 861_770),
    "resnet110v1": (1_734_666, 1_742_762),
    "resnet20v2": (570_602, 574_090),
    "resnet56v2": (1_663_338, 1_673_738),
    "resnet110v2": (3_302_442, 3_323_210),
    "resnet164v2": (4_941_546, 4_972_682),
}


def test_presets_listed():
    assert set(MODELS) == set(KERAS_COUNTS)
    for name, (depth, version) in MODELS.items():
        assert name == f"resnet{depth}v{version}"


@pytest.mark.parametrize("name", list(KERAS_COUNTS))
def test_param_counts_match_keras(name):
    # shapes only: skips the weight init, so the deep presets cost nothing
    with torch.device("meta"):
        model = build_resnet(*MODELS[name])
    trainable, total = KERAS_COUNTS[name]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    bn_stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    assert trainable + bn_stats == total


@pytest.mark.parametrize("depth,version,widths", [(20, 1, (16, 32, 64)), (20, 2, (64, 128, 256))])
def test_shapes(depth, version, widths):
    torch.manual_seed(0)
    model = build_resnet(depth, version).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        h = model.stem(x)
        assert h.shape == (2, 16, 32, 32)
        for stage, c, s in zip(model.stages, widths, (32, 16, 8)):
            h = stage(h)
            assert h.shape == (2, c, s, s)
        assert model.head(h).shape == (2, 10)
    with torch.device("meta"):
        assert build_resnet(depth, version, num_classes=100).eval()(x.to("meta")).shape == (2, 100)


def test_parameter_names_by_stage():
    for depth, version in [(20, 1), (20, 2)]:
        with torch.device("meta"):
            model = build_resnet(depth, version)
        groups = model.stage_parameters()
        assert list(groups) == ["stem", "stages.0", "stages.1", "stages.2", "head"]
        assert all(groups.values())
        assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
        for prefix, params in groups.items():
            assert all(n.startswith(prefix + ".") for n, _ in params)


def _meta_resnet(depth, version):
    with torch.device("meta"):  # structure only, no weight init
        return build_resnet(depth, version)


def _last_op(block):
    """The op that produces the block's output, from an FX trace."""
    graph = torch.fx.symbolic_trace(block).graph
    (out,) = [n for n in graph.nodes if n.op == "output"]
    return out.args[0].target


def test_v2_structure():
    model = _meta_resnet(29, 2)  # n = 3 blocks per stage
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            assert isinstance(block, Bottleneck)
            assert _last_op(block) in (operator.add, torch.add)  # no ReLU after the add
            # pre-activation everywhere except the very first 1x1 conv, which sees the stem output
            assert (block.bn1 is None) == (s == 0 and b == 0)
            # projection on each stage's first block
            assert isinstance(block.shortcut, Conv) == (b == 0)
            assert block.conv1.stride == ((2, 2) if s > 0 and b == 0 else (1, 1))
    assert [type(m) for m in model.head[:2]] == [nn.BatchNorm2d, nn.ReLU]


def test_v1_structure():
    model = _meta_resnet(32, 1)
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            assert _last_op(block) is F.relu  # ReLU after the add
            projected = s > 0 and b == 0
            assert isinstance(block.shortcut, Conv) == projected
            if projected:
                assert block.shortcut.kernel_size == (1, 1) and block.shortcut.stride == (2, 2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.head)


@pytest.mark.parametrize(
    "depth,version", [(21, 1), (19, 1), (2, 1), (0, 1), (20, 3), (56, 0), (21, 2), (32, 2), (2, 2)]
)
def test_invalid_config_raises(depth, version):
    with pytest.raises(ValueError):
        build_resnet(depth, version)


def test_keras_layer_conventions():
    model = build_resnet(20, 2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is not None and torch.all(m.bias == 0) for m in convs)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert torch.all(model.head[-1].bias == 0)


def test_he_normal_init():
    torch.manual_seed(0)
    conv = Conv(64, 256, 3)
    std = math.sqrt(2 / (64 * 9))
    assert conv.weight.std().item() == pytest.approx(std, rel=0.02)  # std after truncation
    assert conv.weight.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6


def test_same_padding_like_tensorflow():
    # Keras/TF 'same' with a 3x3 stride-2 conv on an even input pads only bottom/right,
    # so the top-left tap of output (i, j) reads input (2i, 2j), never padding.
    conv = Conv(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1
        x = torch.arange(1, 65, dtype=torch.float32).view(1, 1, 8, 8)
        assert torch.equal(conv(x), x[..., ::2, ::2])
        assert Conv(1, 1, 3)(x).shape == x.shape
        assert Conv(1, 1, 1, stride=2)(x).shape == (1, 1, 4, 4)


def test_batchnorm_keeps_no_batch_counter_and_still_loads_weights_that_have_one():
    """torch's num_batches_tracked is read only with momentum=None; counting it cost a kernel per
    layer per step."""
    import torch

    model = build_resnet(20, 1)
    model(torch.randn(2, 3, 32, 32))
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict())
    # a checkpoint from before
    old = {
        **model.state_dict(),
        "stem.1.num_batches_tracked": torch.tensor(7),
    }
    build_resnet(20, 1).load_state_dict(old)
