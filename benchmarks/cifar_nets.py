"""Small networks designed for 32 px CIFAR images, as a user would bring them (`--model cifar_nets:NAME` with
benchmarks/ on PYTHONPATH): the block types the seed's budget (5.29 M MACs, 105,428 params) might spend better
than ResNet-18's (RESULTS 7.33).

- resnet8: MLPerf Tiny's image-classification ResNet-8 (mlcommons/tiny, benchmark/training/image_classification):
  a 3x3 stem of 16, three residual stages of one block each (16, 32, 64 channels; stride 1, 2, 2; a 1x1 shortcut
  where the shape changes), global pooling, a linear classifier. 78,666 parameters and 12.5 M MACs as published
  (78,042 here: no biases before batch norms); wider and downsampled in its first stage with `width`/`first_stride`.
- mobilenet_v2_cifar: MobileNetV2's inverted residuals (expand 1x1, depthwise 3x3, project 1x1; the residual where the
  shape allows) with the stride-1 stem and the stage strides (1, 1, 2, 2, 1, 2, 1) that the usual CIFAR versions use
  (e.g. kuangliu/pytorch-cifar), width multiplier `width`.
"""
from __future__ import annotations

import torch.nn as nn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + ([nn.ReLU(inplace=True)] if relu else [])


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), *_conv_bn(cout, cout, 3, relu=False))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(*_conv_bn(cin, cout, 1, stride,
                                                                                                  relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def resnet8(num_classes: int = 10, width: int = 16, first_stride: int = 1) -> nn.Module:
    """MLPerf Tiny's ResNet-8 with the defaults; `width` channels in the first stage (twice and four times that in
    the others) and `first_stride` 2 (the first stage at 16 x 16) give a shape that spends both of the seed's caps:
    width 18 with first_stride 2 is 4.52 M MACs and 98,884 params (RESULTS 7.33)."""
    a = width
    return nn.Sequential(*_conv_bn(3, a, 3), BasicBlock(a, a, first_stride), BasicBlock(a, 2 * a, 2),
                         BasicBlock(2 * a, 4 * a, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * a, num_classes))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        expand = _conv_bn(cin, mid, 1) if expansion != 1 else []
        self.body = nn.Sequential(*expand, *_conv_bn(mid, mid, 3, stride, mid), *_conv_bn(mid, cout, 1, relu=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


# (expansion, channels, blocks, stride) per stage, as MobileNetV2 with CIFAR strides
MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


def mobilenet_v2_cifar(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    def w(c: int) -> int:
        return max(8, int(round(c * width)))

    layers, cin = _conv_bn(3, w(32), 3), w(32)
    for expansion, c, blocks, stride in MBV2_STAGES:
        for i in range(blocks):
            layers.append(InvertedResidual(cin, w(c), stride if i == 0 else 1, expansion))
            cin = w(c)
    layers += [*_conv_bn(cin, w(1280), 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w(1280), num_classes)]
    return nn.Sequential(*layers)
