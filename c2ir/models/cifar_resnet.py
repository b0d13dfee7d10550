"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016) with option-A shortcuts.

Key-compatible with Yerlan Idelbayev's widely used CIFAR-10 checkpoints
(`conv1`, `bn1`, `layer1..3`, `linear`). ReLUs are modules (no parameters, so keys
are unchanged) so that the stem and block outputs can be hooked by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from c2ir.models.resnet import make_stage


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the channels (planes/4 each side)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


def option_a_shortcut(_in_planes: int, planes: int, _stride: int) -> nn.Module:
    return OptionAShortcut(planes)


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.stem_act = nn.ReLU()
        self.layer1 = make_stage(16, 16, n, 1, option_a_shortcut)
        self.layer2 = make_stage(16, 32, n, 2, option_a_shortcut)
        self.layer3 = make_stage(32, 64, n, 2, option_a_shortcut)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem_act(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))
