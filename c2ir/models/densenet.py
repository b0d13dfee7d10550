"""DenseNet-BC (Huang et al. 2017) in the layout of the ODIN / Energy-OOD code (`DenseNet3`).

Keys: `conv1`, `block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}`, `trans{1,2}.{bn1,conv1}`, `bn1`, `fc`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BottleneckBlock(nn.Module):
    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        inter = growth * 4
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(inter, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return torch.cat([x, out], 1)


class TransitionBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(self.relu(self.bn1(x))), 2)


class DenseBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, growth: int):
        super().__init__()
        self.layer = nn.Sequential(*[BottleneckBlock(in_planes + i * growth, growth) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class DenseNet3(nn.Module):
    def __init__(self, depth: int = 100, num_classes: int = 10, growth: int = 12,
                 reduction: float = 0.5, in_channels: int = 3):
        super().__init__()
        n = (depth - 4) // 6
        planes = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=1, padding=1, bias=False)
        self.block1 = DenseBlock(n, planes, growth)
        planes += n * growth
        self.trans1 = TransitionBlock(planes, int(math.floor(planes * reduction)))
        planes = int(math.floor(planes * reduction))
        self.block2 = DenseBlock(n, planes, growth)
        planes += n * growth
        self.trans2 = TransitionBlock(planes, int(math.floor(planes * reduction)))
        planes = int(math.floor(planes * reduction))
        self.block3 = DenseBlock(n, planes, growth)
        planes += n * growth
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trans1(self.block1(self.conv1(x)))
        out = self.trans2(self.block2(out))
        out = self.relu(self.bn1(self.block3(out)))
        return self.fc(out.mean(dim=(2, 3)))
