"""A user's own CNN, as a user would write it: imported by tests as `user_nets:build_net`."""
import torch.nn as nn


class SmallNet(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width, bias=False),  # depthwise
            nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def build_net(width: int = 16, num_classes: int = 10) -> nn.Module:
    return SmallNet(width, num_classes)


def not_a_model(num_classes: int = 10):
    return "a string"


def fixed_size_net(num_classes: int = 10, size: int = 32) -> nn.Module:
    """A classifier whose linear layer fits one image size only (size x size)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * size * size, num_classes))


def unpooled_net(num_classes: int = 10) -> nn.Module:
    """A classifier head without its pooling: a 1 x 1 convolution to the classes, one score per pixel."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))
