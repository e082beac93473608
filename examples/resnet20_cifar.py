"""ResNet-20 for CIFAR-10 (He et al. 2015, section 4.2), shortcut "option A", as a reportgen factory.

Written from the description in ../shared/data/README.md so that the checkpoint
`resnet20-12fca82f.th` (github.com/akamaster/pytorch_resnet_cifar10, saved from nn.DataParallel
in the legacy pickle format) loads with `strict=True` once the `module.` prefix is stripped:

    reportgen examples/resnet20_cifar.py:resnet20 --weights ../shared/data/resnet20-12fca82f.th ...

Details that matter for correct predictions (each one costs accuracy when wrong):
- the down-sampling shortcut has no parameters: it takes every second row and column starting at
  index 0 (`x[:, :, ::2, ::2]`) and zero-pads the channels equally on both sides (planes // 4 in
  front and behind), so the original channels sit in the middle of the wider range;
- every conv is 3x3, padding 1, no bias; ReLU comes after the residual addition;
- global average pooling over the last 8x8 map, then `linear` (64 -> 10) with bias, no softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ResNetCifar", "resnet20", "resnet32", "resnet44", "resnet56"]


class ShortcutA(nn.Module):
    """Parameter-free projection: subsample by 2, zero-pad `pad` channels before and after."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.pad pads from the last dimension backwards: (W, W, H, H, C, C).
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(3, num_classes)


def resnet32(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(5, num_classes)


def resnet44(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(7, num_classes)


def resnet56(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(9, num_classes)
