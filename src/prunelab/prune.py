"""The only module that talks to Torch-Pruning (https://github.com/VainF/Torch-Pruning).

Structure is recorded as Torch-Pruning's pruning history: a list of (layer name, out-channel?, indices)
applied in order to the dense model. Replaying it on a freshly built dense model gives back the pruned
architecture, which is how checkpoints are resumed and exported models are loaded without pickles.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from . import distributed
from .config import Config, PrunelabError
from .models import build_model, classifier


def make_importance(name: str) -> tp.importance.Importance:
    builders = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.TaylorImportance(),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "fpgm": lambda: tp.importance.FPGMImportance(p=2),
        "random": lambda: tp.importance.RandomImportance(),
    }
    if name not in builders:
        raise PrunelabError(f"unknown importance '{name}'; choose one of: {', '.join(builders)}")
    return builders[name]()


def example_input(model: nn.Module, size: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, size, size, device=next(model.parameters()).device)


def geometric_scheduler(pruning_ratio: float, steps: int) -> list[float]:
    """Ratios after 0..steps steps when each step removes the same share of the channels that remain:
    kept(k) = (1 - ratio) ** (k / steps). Gentler than linear at the end of extreme compression."""
    return [1 - (1 - pruning_ratio) ** (k / steps) for k in range(steps + 1)]


SCHEDULERS = {"linear": tp.pruner.algorithms.scheduler.linear_scheduler, "geometric": geometric_scheduler}


def build_pruner(model: nn.Module, cfg: Config, pruning_ratio: float | None = None,
                 iterative_steps: int | None = None) -> tp.pruner.BasePruner:
    """A pruner that reaches the pruning ratio in cfg.iterative_steps steps on cfg.schedule; the classifier is
    never pruned. Torch-Pruning traces the model in eval mode and leaves it there: callers put it back in train mode."""
    return tp.pruner.MetaPruner(
        model,
        example_inputs=example_input(model),
        importance=make_importance(cfg.importance),
        pruning_ratio=cfg.pruning_ratio if pruning_ratio is None else pruning_ratio,
        iterative_steps=iterative_steps or cfg.iterative_steps,
        iterative_pruning_ratio_scheduler=SCHEDULERS[cfg.schedule],
        global_pruning=cfg.global_pruning,
        max_pruning_ratio=cfg.max_pruning_ratio,
        ignored_layers=[classifier(model)],
        round_to=cfg.round_to or None,
    )


def ratio_for_target(model: nn.Module, cfg: Config, target_macs: float = 0, target_params: float = 0,
                     iterations: int = 14) -> float:
    """The smallest channel ratio whose one-shot pruning of (a copy of) `model` gives at most the target MACs
    or parameters, by bisection. With per-layer pruning the widths depend on the ratio only; with global
    pruning also on the weights, so pass the trained dense model."""
    import copy
    import dataclasses

    # Taylor needs gradients to rank channels; the widths a ratio gives do not, so search with L2.
    search_cfg = dataclasses.replace(cfg, importance="l2") if cfg.importance == "taylor" else cfg

    def cost(ratio: float) -> float:
        m = copy.deepcopy(model).cpu()
        pruner = build_pruner(m, search_cfg, pruning_ratio=ratio, iterative_steps=1)
        torch.manual_seed(0)
        pruner.step()
        macs, params = count_macs_params(m)
        return macs if target_macs else params

    target = target_macs or target_params
    lo, hi = 0.0, 0.95  # beyond this, layers would lose every channel and Torch-Pruning skips them
    if cost(hi) > target:
        raise PrunelabError(f"the target of {target:.4g} {'MACs' if target_macs else 'parameters'} is below what "
                            f"pruning {hi:.1%} of the channels reaches; raise the target")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost(mid) <= target else (mid, hi)
    return hi


def step_ratio(pruner: tp.pruner.BasePruner, step: int) -> float:
    """Channel pruning ratio the schedule reaches after `step` steps."""
    return float(pruner.per_step_pruning_ratio[step])


def prune_step(pruner: tp.pruner.BasePruner, model: nn.Module, gradient_batches=None) -> None:
    """Remove the next share of channels. For gradient-based importance (taylor), `gradient_batches`
    yields (inputs, labels) whose loss gradients are accumulated first."""
    if isinstance(pruner.importance, tp.importance.GroupTaylorImportance):
        if gradient_batches is None:
            raise PrunelabError("taylor importance needs training batches for its gradients")
        model.zero_grad(set_to_none=True)
        model.eval()  # gradients of the deployed (eval-mode) network, BN statistics untouched
        for x, y in gradient_batches:
            F.cross_entropy(model(x), y).backward()
        distributed.average_gradients(model)  # under torchrun every rank must rank channels alike
    pruner.step()
    model.zero_grad(set_to_none=True)


def history(pruner: tp.pruner.BasePruner) -> list:
    """The pruning history as plain JSON data: [[layer name, out-channel pruning?, [indices]], ...]."""
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in pruner.pruning_history()]


def restore(pruner: tp.pruner.BasePruner, pruning_history: list, steps_done: int) -> None:
    """Replay a recorded history on the (dense) model the pruner was built on, and continue after step `steps_done`.

    Torch-Pruning (1.6) records each ranking scope's channel count lazily, at the first step() it
    runs; a pruner that first steps on an already-pruned model would take the pruned widths as the
    100% mark and over-prune. So we first run one step on the dense model without pruning anything
    (the interactive generator yields groups we leave alone), then replay the history."""
    importance = pruner.importance
    pruner.importance = tp.importance.MagnitudeImportance(p=2)  # only channel counts matter here
    try:
        for _ in pruner.step(interactive=True) or ():
            pass
    finally:
        pruner.importance = importance
    try:
        pruner.load_pruning_history([list(h) for h in pruning_history])
    except Exception as e:
        raise PrunelabError(f"cannot replay the pruning history on this model ({type(e).__name__}: {e}); "
                            "the checkpoint was made from another architecture")
    pruner.current_step = steps_done


def rebuild(model_name: str, pruning_history: list, num_classes: int = 10) -> nn.Module:
    """A fresh model with the pruned structure described by `pruning_history` (weights still random)."""
    model = build_model(model_name, num_classes)
    if pruning_history:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model))
        try:
            graph.load_pruning_history([list(h) for h in pruning_history])
        except Exception as e:
            raise PrunelabError(f"the pruning history does not fit model '{model_name}' ({type(e).__name__}: {e}); "
                                "the description file belongs to another architecture")
    return model


def count_macs_params(model: nn.Module, input_size: int = 32) -> tuple[int, int]:
    """MACs and parameters for one image, counted by Torch-Pruning (tp.utils.count_ops_and_params)."""
    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model, example_input(model, input_size))
    model.train(was_training)
    return int(macs), int(params)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution: a readable summary of the pruned structure."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
