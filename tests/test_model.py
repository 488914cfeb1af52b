import torch

from prunelab.models import build_model
from prunelab.prune import count_macs_params


def test_resnet18_cifar_has_the_seeds_size_and_cost():
    model = build_model("resnet18_cifar")
    macs, params = count_macs_params(model)
    assert params == 11_173_962
    assert abs(macs - 0.557e9) / 0.557e9 < 0.005


def test_resnet18_cifar_keeps_32x32_resolution_in_the_stem_and_outputs_10_logits():
    model = build_model("resnet18_cifar").eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.bias is None
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_module_names_follow_torchvision():
    names = set(build_model("resnet18_cifar").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer4.1.conv2.weight", "fc.weight", "fc.bias"} <= names
