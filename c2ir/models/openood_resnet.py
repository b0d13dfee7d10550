"""OpenOOD v1.5's CIFAR ResNet-18 (`ResNet18_32x32`, openood/networks/resnet18_32x32.py), so its published
checkpoints (`<run>/s<seed>/best.ckpt`, a plain state dict) load as they are.

Its layout is c2ir's CIFAR ResNet-18 (`models/resnet.py`: 3x3 stem, `layer1..4` of two BasicBlocks with 1x1
conv + BN projection shortcuts under `shortcut.0/1`, global average pooling) with the classifier named `fc`
instead of `linear`: the same parameters under the same keys otherwise, and the same forward
(relu(bn1(conv1(x))), the four stages, average pooling, fc).
"""

from __future__ import annotations

import torch

from c2ir.models.resnet import ResNet


class OpenOODResNet18(ResNet):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__([2, 2, 2, 2], num_classes, in_channels)
        self.fc = self.linear  # OpenOOD's name for the head (registered last, as in OpenOOD's module order)
        del self.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled_features(x))
