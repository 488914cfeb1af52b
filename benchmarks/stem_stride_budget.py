"""What a stride-2 stem buys at the seed's budget: ResNet-18 (CIFAR stem 3x3 / stride 1, as resnet18_cifar) against
the same network with a 3x3 / stride 2 stem and no max-pool, each pruned uniformly (Torch-Pruning, L2, the
classifier kept) to the ratio that brings it to <= 5.29 M MACs (bisection), on one 32 px image. Prints the ratio,
MACs, parameters and the distinct widths left, and writes them as JSON (argument: the output path, optional).
No training: the question is only which of the seed's two caps (105,428 params, 5.29 M MACs) binds each shape."""
import json
import sys

import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision

from prunelab.models import resnet18_cifar

MACS = 5.29e6


def stride2_stem(num_classes: int = 10) -> nn.Module:
    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1, m.maxpool = nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.Identity()
    return m


def prune_to(build, macs_cap: float, x: torch.Tensor) -> dict:
    lo, hi, best = 0.0, 0.99, None
    for _ in range(16):
        r = (lo + hi) / 2
        m = build().eval()
        tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=r,
                             ignored_layers=[m.fc]).step()
        macs, params = tp.utils.count_ops_and_params(m, x)
        if macs > macs_cap:
            lo = r
        else:
            hi, best = r, {"ratio": r, "macs": macs, "params": params,
                           "widths": sorted({c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)})}
    return best


if __name__ == "__main__":
    x = torch.zeros(1, 3, 32, 32)
    rows = {name: prune_to(build, MACS, x) for name, build in
            (("resnet18_cifar (stem 3x3 / 1)", resnet18_cifar), ("stem 3x3 / 2, no max-pool", stride2_stem))}
    print(f"| network | ratio | MACs | params | widths |\n| :--- | ---: | ---: | ---: | :--- |")
    for name, r in rows.items():
        print(f"| {name} | {r['ratio']:.3f} | {r['macs'] / 1e6:.2f} M | {r['params'] / 1e3:.0f} k | {r['widths']} |")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(rows, f, indent=1)
