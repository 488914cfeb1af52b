"""Model builders by name. Module names follow torchvision so state dicts interchange with other code."""
from __future__ import annotations

import torch.nn as nn
import torchvision

from .config import MODELS, PrunelabError


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32x32 inputs, as in the seed project:
    conv1 becomes 3x3 / stride 1 / padding 1 without bias, and the max-pool is removed.
    11,173,962 parameters and 0.557 GMACs at 32x32 with 10 classes."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


_BUILDERS = {"resnet18_cifar": resnet18_cifar}
assert set(_BUILDERS) == set(MODELS)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    if name not in _BUILDERS:
        raise PrunelabError(f"unknown model '{name}'; choose one of: {', '.join(_BUILDERS)}")
    return _BUILDERS[name](num_classes=num_classes)


def classifier(model: nn.Module) -> nn.Module:
    """The final layer whose outputs are the classes; pruning must leave it alone."""
    return model.fc
