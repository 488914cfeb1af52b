"""What a stride-2 stem buys at the seed's budget: ResNet-18 (CIFAR stem 3x3 / stride 1, as resnet18_cifar) against
the same network with a 3x3 / stride 2 stem and no max-pool, each pruned uniformly (Torch-Pruning, L2, the
classifier kept) to the ratio that brings it to <= 5.29 M MACs (bisection), on one 32 px image. Prints the ratio,
MACs, parameters and the distinct widths left, and writes them as JSON (argument: the output path, optional).
No training: the question is only which of the seed's two caps (105,428 params, 5.29 M MACs) binds each shape."""
import sys

import torch.nn as nn
import torchvision

from prunelab.config import make_config
from prunelab.files import write_json
from prunelab.models import resnet18_cifar
from prunelab.prune import count_macs_params, prune_once
from prunelab.targets import ratio_for_target

MACS = 5.29e6


def stride2_stem(num_classes: int = 10) -> nn.Module:
    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1, m.maxpool = nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.Identity()
    return m


def prune_to(model: nn.Module, macs_cap: float) -> dict:
    """Uniform L2 pruning (no rounding, the classifier kept) at the smallest ratio that meets `macs_cap`."""
    cfg = make_config("full", {"round_to": 0})
    ratio = ratio_for_target(model, cfg, target_macs=macs_cap, iterations=16, num_classes=10)
    pruned = prune_once(model, cfg, ratio, image_size=32, num_classes=10)
    macs, params = count_macs_params(pruned, 32)
    return {"ratio": ratio, "macs": macs, "params": params,
            "widths": sorted({c.out_channels for c in pruned.modules() if isinstance(c, nn.Conv2d)})}


if __name__ == "__main__":
    rows = {name: prune_to(build(), MACS) for name, build in
            (("resnet18_cifar (stem 3x3 / 1)", resnet18_cifar), ("stem 3x3 / 2, no max-pool", stride2_stem))}
    print(f"| network | ratio | MACs | params | widths |\n| :--- | ---: | ---: | ---: | :--- |")
    for name, r in rows.items():
        print(f"| {name} | {r['ratio']:.3f} | {r['macs'] / 1e6:.2f} M | {r['params'] / 1e3:.0f} k | {r['widths']} |")
    if len(sys.argv) > 1:
        write_json(sys.argv[1], rows)
