"""ResNet-18/34 in the common CIFAR layout (3x3 stem, `layer1..4`, `linear`).

Key-compatible with the ResNet-34 checkpoint released with the Mahalanobis detector
(Lee et al., NeurIPS 2018), the setting C2IR is evaluated in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def projection_shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Option B: 1x1 conv + BN (keys `shortcut.0`, `shortcut.1`)."""
    return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, then ReLU; `make_shortcut` builds the shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 make_shortcut: Callable[[int, int, int], nn.Module] = projection_shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()  # identity, no keys
        if stride != 1 or in_planes != planes:
            self.shortcut = make_shortcut(in_planes, planes, stride)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def make_stage(in_planes: int, planes: int, blocks: int, stride: int,
               make_shortcut: Callable[[int, int, int], nn.Module] = projection_shortcut) -> nn.Sequential:
    """`blocks` BasicBlocks, the first with `stride`."""
    return nn.Sequential(*[
        BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, make_shortcut)
        for i in range(blocks)
    ])


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.stem_act = nn.ReLU()
        self.layer1 = make_stage(64, 64, blocks[0], 1)
        self.layer2 = make_stage(64, 128, blocks[1], 2)
        self.layer3 = make_stage(128, 256, blocks[2], 2)
        self.layer4 = make_stage(256, 512, blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features: the last stage's output averaged over space."""
        out = self.stem_act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return out.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooled_features(x))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


def resnet34(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels)
