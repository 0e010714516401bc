"""CIFAR-10 ResNet v1 / v2, layer for layer as in the Keras example cifar10_resnet.py
(resnet_v1 / resnet_v2), written in PyTorch.

Keras conventions kept on purpose:
- every conv has a bias (Keras Conv2D use_bias=True), even when BN follows; biases start at 0;
- conv and dense kernels use Keras he_normal: truncated normal cut at +-2 sigma, with
  sigma = sqrt(2 / fan_in) / 0.8796 so that the *truncated* distribution has std sqrt(2 / fan_in);
- BatchNorm: Keras momentum 0.99 (= torch momentum 0.01), eps 1e-3, gamma 1, beta 0;
- padding='same' as in TF/Keras: when the total padding is odd (3x3 stride 2 convs of v1)
  the extra zero goes at the bottom/right; 1x1 stride-2 convs pad nothing.
- the model returns logits (the example's softmax belongs in the loss).
The example's l2(1e-4) kernel regularizer (conv kernels only) is a training choice, not built here.

Parameter names start with stem., stages.0., stages.1., stages.2., head. (see
ResNet.stage_parameters).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS: dict[str, tuple[int, int]] = {
    "resnet20v1": (20, 1),
    "resnet32v1": (32, 1),
    "resnet44v1": (44, 1),
    "resnet56v1": (56, 1),
    "resnet110v1": (110, 1),
    "resnet20v2": (20, 2),
    "resnet56v2": (56, 2),
    "resnet110v2": (110, 2),
    "resnet164v2": (164, 2),
}


def he_normal_(w: torch.Tensor) -> torch.Tensor:
    """Keras he_normal: truncated normal (+-2 sigma), std corrected for the truncation."""
    std = math.sqrt(2.0 / w[0].numel()) / 0.87962566103423978  # fan_in = in * kh * kw
    return nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)


def _drop_batch_count(module, state_dict, prefix, *args) -> None:
    state_dict.pop(prefix + "num_batches_tracked", None)  # checkpoints from before the counter went


def bn(c: int) -> nn.BatchNorm2d:
    """Keras' BatchNormalization (momentum 0.99 = torch's 0.01, eps 1e-3) without torch's batch
    counter: only momentum=None reads it, and counting costs one kernel per layer per training step
    (55 in ResNet56v2)."""
    norm = nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)
    norm.register_buffer("num_batches_tracked", None)
    norm.register_load_state_dict_pre_hook(_drop_batch_count)
    return norm


class Conv(nn.Conv2d):
    """Keras Conv2D(padding='same', kernel_initializer='he_normal'), bias kept and zeroed.
    TF 'same' padding, exact when the stride divides the input size (always the case here)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        total = max(k - stride, 0)
        super().__init__(cin, cout, k, stride, padding=total // 2)
        self.extra = total % 2  # odd pixel of padding goes bottom/right
        he_normal_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        if self.extra:
            x = F.pad(x, (0, self.extra, 0, self.extra))
        return super().forward(x)


class BasicBlock(nn.Module):
    """v1: conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = Conv(cin, cout, 3, stride), bn(cout)
        self.conv2, self.bn2 = Conv(cout, cout, 3), bn(cout)
        # projection (plain 1x1 conv, no BN) only where the shape changes
        self.shortcut = Conv(cin, cout, 1, stride) if stride != 1 else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(self.shortcut(x) + y)


class Bottleneck(nn.Module):
    """v2 pre-activation bottleneck: [BN-ReLU]-conv1x1 / BN-ReLU-conv3x3 / BN-ReLU-conv1x1,
    added to the shortcut with no activation after the add. bn1 is None on stage 0 block 0,
    whose first conv takes the stem output (already BN-ReLU'd) directly."""

    def __init__(self, cin: int, cmid: int, cout: int, stride: int, preact: bool, project: bool):
        super().__init__()
        self.bn1 = bn(cin) if preact else None
        self.conv1 = Conv(cin, cmid, 1, stride)
        self.bn2, self.conv2 = bn(cmid), Conv(cmid, cmid, 3)
        self.bn3, self.conv3 = bn(cmid), Conv(cmid, cout, 1)
        # first block of every stage: plain 1x1 conv on the un-activated input x
        self.shortcut = Conv(cin, cout, 1, stride) if project else nn.Identity()

    def forward(self, x):
        y = x if self.bn1 is None else F.relu(self.bn1(x))
        y = self.conv1(y)
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return self.shortcut(x) + y


class ResNet(nn.Module):
    STAGES = ("stem", "stages.0", "stages.1", "stages.2", "head")

    def __init__(self, depth: int, version: int, num_classes: int = 10):
        super().__init__()
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {version!r}")
        step = 6 if version == 1 else 9
        if depth < step + 2 or (depth - 2) % step:
            raise ValueError(f"ResNet v{version} depth must be {step}n+2 (n >= 1), got {depth}")
        n = (depth - 2) // step
        self.depth, self.version = depth, version

        self.stem = nn.Sequential(Conv(3, 16, 3), bn(16), nn.ReLU())
        stages = []
        if version == 1:
            cin = 16
            for s, c in enumerate((16, 32, 64)):
                stride = 1 if s == 0 else 2
                stages.append(
                    nn.Sequential(
                        *[
                            BasicBlock(cin if b == 0 else c, c, stride if b == 0 else 1)
                            for b in range(n)
                        ]
                    )
                )
                cin = c
            head = [nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, num_classes)]
        else:
            cin = 16
            for s, (cmid, cout) in enumerate(((16, 64), (64, 128), (128, 256))):
                blocks = []
                for b in range(n):
                    stride = 2 if s > 0 and b == 0 else 1
                    preact = not (s == 0 and b == 0)
                    blocks.append(
                        Bottleneck(
                            cin if b == 0 else cout, cmid, cout, stride, preact, project=b == 0
                        )
                    )
                stages.append(nn.Sequential(*blocks))
                cin = cout
            head = [bn(256), nn.ReLU(), nn.AvgPool2d(8), nn.Flatten(), nn.Linear(256, num_classes)]
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*head)
        he_normal_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))

    def stage_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """(name, param) pairs grouped by stage prefix: stem, stages.0, stages.1, stages.2, head."""
        groups = {k: [] for k in self.STAGES}
        for name, p in self.named_parameters():
            groups[next(k for k in self.STAGES if name.startswith(k + "."))].append((name, p))
        return groups


def build_resnet(
    depth: int, version: int, num_classes: int = 10, bn_momentum: float = 0.01
) -> ResNet:
    """Keras cifar10_resnet.py ResNet: v1 needs depth 6n+2, v2 needs depth 9n+2.
    bn_momentum is torch's (weight of the new batch); Keras' default 0.99 is 0.01 here."""
    model = ResNet(depth, version, num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = bn_momentum
    return model
