import pytest
import torch

from prunelab.config import make_config
from prunelab.modelfile import load as load_model, save as save_model
from prunelab.models import build_model
from prunelab.prune import build_pruner, count_macs_params, history, prune_step, replay_structure, restore


def pruned(importance="l2", steps=4, ratio=0.5, **kw):
    torch.manual_seed(0)
    cfg = make_config("seed", {"importance": importance, "iterative_steps": steps, "pruning_ratio": ratio, **kw})
    model = build_model("resnet18_cifar")
    return cfg, model, build_pruner(model, cfg)


def test_one_pruning_step_lowers_macs_and_params_and_keeps_ten_outputs():
    cfg, model, pruner = pruned()
    macs0, params0 = count_macs_params(model)
    prune_step(pruner, model)
    macs1, params1 = count_macs_params(model)
    assert macs1 < macs0 and params1 < params0
    assert model.fc.out_features == 10
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_ratio_0_9_in_steps_reaches_the_seeds_pruned_size():
    cfg, model, pruner = pruned(steps=20, ratio=0.9)
    for _ in range(20):
        prune_step(pruner, model)
    macs, params = count_macs_params(model)
    assert params == 105_428  # the seed's pruned model
    assert abs(macs - 5.29e6) / 5.29e6 < 0.01
    assert all(w % 2 == 0 for w in [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)])


@pytest.mark.parametrize("round_to", [8, 16])
def test_round_to_keeps_multiples_and_never_leaves_a_layer_unpruned(round_to):
    """At ratio 0.9 ResNet-18's 64-channel layers keep 6 channels, which Torch-Pruning 1.6.1 rounded to 0 with
    round_to 8 or 16 and then left at all 64: 158 M / 291 M MACs instead of ~6 M / ~14 M."""
    cfg, model, pruner = pruned(steps=2, ratio=0.9, round_to=round_to)
    for _ in range(2):
        prune_step(pruner, model)
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % round_to == 0 for w in widths) and max(widths) <= 0.1 * 512 + round_to
    macs, _ = count_macs_params(model)
    assert macs < 3 * 5.29e6  # the round_to=2 model has 5.29 M


def test_taylor_importance_uses_gradients_and_prunes():
    cfg, model, pruner = pruned(importance="taylor")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    prune_step(pruner, model, [(x, y)])
    assert count_macs_params(model)[0] < 0.557e9
    assert all(p.grad is None for p in model.parameters())


def test_every_importance_criterion_prunes():
    for name in ("l1", "bn_scale", "lamp", "fpgm", "random"):
        _, model, pruner = pruned(importance=name, global_pruning=(name == "lamp"), max_pruning_ratio=0.8)
        prune_step(pruner, model)
        assert count_macs_params(model)[1] < 11_173_962, name


@pytest.mark.parametrize("global_pruning", [False, True])
def test_replaying_the_history_rebuilds_the_structure_and_resumes_the_schedule(global_pruning):
    # Torch-Pruning records each scope's initial width at its first step; a restored pruner must not
    # mistake the pruned widths for the initial ones (it would over-prune)
    cfg, model, pruner = pruned(steps=4, ratio=0.5, global_pruning=global_pruning)
    prune_step(pruner, model)
    prune_step(pruner, model)
    hist = history(pruner)
    again = build_model("resnet18_cifar")
    replay_structure(again, hist)
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    # continuing from a restored pruner gives the same structure as continuing the original
    fresh = build_model("resnet18_cifar")
    fresh.load_state_dict(build_model("resnet18_cifar").state_dict())
    p2 = build_pruner(fresh, cfg)
    restore(p2, hist, 2)
    fresh.load_state_dict(model.state_dict())
    prune_step(pruner, model)
    prune_step(p2, fresh)
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in model.parameters()]
    assert history(p2) == history(pruner)


def test_saved_pruned_model_loads_with_identical_outputs(tmp_path):
    cfg, model, pruner = pruned()
    prune_step(pruner, model)
    model.eval()
    save_model(tmp_path / "m", model, "resnet18_cifar", history(pruner))
    loaded, desc = load_model(tmp_path / "m.safetensors")
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert desc["layer_widths"]["conv1"] == model.conv1.out_channels
