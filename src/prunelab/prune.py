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

import copy
import dataclasses

from . import distributed
from .config import IMPORTANCES, Config
from .errors import PrunelabError
from .models import classifier


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
        raise PrunelabError(f"unknown importance '{name}'; choose one of: {', '.join(IMPORTANCES)}")
    return builders[name]()


def example_input(model: nn.Module, size: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, size, size, device=next(model.parameters()).device)


def geometric_scheduler(pruning_ratio: float, steps: int) -> list[float]:
    """Ratios after 0..steps steps when each step removes the same share of the channels that remain:
    kept(k) = (1 - ratio) ** (k / steps). Gentler than linear at the end of extreme compression."""
    return [1 - (1 - pruning_ratio) ** (k / steps) for k in range(steps + 1)]


SCHEDULERS = {"linear": tp.pruner.algorithms.scheduler.linear_scheduler, "geometric": geometric_scheduler}


class _MetaPruner(tp.pruner.MetaPruner):
    """Torch-Pruning's MetaPruner with one fix: round_to rounds the channels a layer keeps down to a multiple of
    round_to, but never to zero. Torch-Pruning 1.6.1 rounds 6 kept channels to 0 with round_to=8; its dependency
    graph then refuses to empty the layer, so the layer keeps *all* its channels (ResNet-18 at ratio 0.9 ended
    with 158 M MACs at round_to=8 and 291 M at 16, against 5.3 M at 2). Layers narrower than round_to are left
    as they are. build_pruner passes round_to 1 for "no rounding", so that a small layer cut by a large ratio (3
    channels at 95%) keeps one channel instead of all of them."""

    def _round_to(self, n_pruned, current_channels, round_to):
        keep = current_channels - n_pruned
        keep = max(keep - keep % round_to, min(round_to, current_channels))
        return max(current_channels - keep, 0)


def build_pruner(model: nn.Module, cfg: Config, pruning_ratio: float | None = None,
                 iterative_steps: int | None = None, image_size: int = 32,
                 num_classes: int | None = None, group_ratios: dict | None = None) -> tp.pruner.BasePruner:
    """A pruner that reaches `pruning_ratio` (default cfg.pruning_ratio; a run with a MACs or params target
    passes the ratio its dense stage found) in cfg.iterative_steps steps on cfg.schedule; the classifier is
    never pruned (found by models.classifier). `group_ratios` ({root layer name: ratio}, from group_roots and a
    width search) gives each prunable group its own final ratio instead; each group's steps follow the schedule.
    Allocation "global" (or the older global_pruning) ranks channels across layers. Torch-Pruning traces the model in eval mode at `image_size` and
    leaves it there: callers put it back in train mode. Depthwise and grouped convolutions, squeeze-excite
    blocks and parameters outside standard layers (ConvNeXt's layer scale) are handled by Torch-Pruning's
    dependency graph; the test matrix in tests/test_models.py checks the families."""
    return _MetaPruner(
        model,
        example_inputs=example_input(model, image_size),
        importance=make_importance(cfg.importance),
        pruning_ratio=cfg.pruning_ratio if pruning_ratio is None else pruning_ratio,
        iterative_steps=iterative_steps or cfg.iterative_steps,
        iterative_pruning_ratio_scheduler=SCHEDULERS[cfg.schedule],
        global_pruning=is_global(cfg),
        max_pruning_ratio=cfg.max_pruning_ratio,
        ignored_layers=[classifier(model, num_classes)],
        unwrapped_parameters=_unwrapped(model),
        round_to=cfg.round_to or 1,
        pruning_ratio_dict=_by_module(model, group_ratios),
    )


def is_global(cfg: Config) -> bool:
    return cfg.global_pruning or cfg.allocation == "global"


def _by_module(model: nn.Module, group_ratios: dict | None) -> dict | None:
    if not group_ratios:
        return None
    modules = dict(model.named_modules())
    missing = [name for name in group_ratios if name not in modules]
    if missing:
        raise PrunelabError(f"the searched widths name layers this model lacks ({missing[0]}); they belong to another "
                            "architecture")
    return {modules[name]: float(ratio) for name, ratio in group_ratios.items()}


def group_roots(model: nn.Module, cfg: Config, image_size: int = 32, num_classes: int | None = None) -> dict[str, int]:
    """The prunable channel groups of `model` as Torch-Pruning couples them (a residual stream and every layer
    that must keep its width is one group): {name of the group's root layer: its channels}, in graph order.
    A width search gives each of these its own ratio (build_pruner's group_ratios)."""
    probe = copy.deepcopy(model).float().cpu()
    pruner = build_pruner(probe, dataclasses.replace(cfg, importance="l2", allocation="uniform",
                                                     global_pruning=False),
                          pruning_ratio=0.5, iterative_steps=1, image_size=image_size, num_classes=num_classes)
    names = {m: n for n, m in probe.named_modules()}
    roots = {}
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        module = group[0].dep.target.module
        if module in names:
            roots[names[module]] = int(pruner.DG.get_out_channels(module))
    return roots


def build_sparsifier(model: nn.Module, cfg: Config, image_size: int = 32,
                     num_classes: int | None = None) -> tp.pruner.GroupNormPruner:
    """Torch-Pruning's group-norm regulariser (the "group_sl" recipe of its benchmarks, DepGraph, CVPR 2023):
    after every backward pass, `regularize(model)` adds reg * gamma * w to the gradient of each channel group,
    gamma growing (up to 2^4) as the group's L2 norm falls, so unimportant groups shrink towards zero before
    they are pruned. Same graph settings as build_pruner; it prunes nothing itself."""
    return tp.pruner.GroupNormPruner(
        model,
        example_inputs=example_input(model, image_size),
        importance=tp.importance.MagnitudeImportance(p=2),
        reg=cfg.sparse_reg,
        global_pruning=is_global(cfg),
        pruning_ratio=cfg.pruning_ratio,
        ignored_layers=[classifier(model, num_classes)],
        unwrapped_parameters=_unwrapped(model),
        round_to=cfg.round_to or None,
    )


def _unwrapped(model: nn.Module) -> list:
    """Parameters that belong to no standard layer (ConvNeXt's `layer_scale`, C x 1 x 1), with the dimension that
    follows the channels: the first non-singleton one. Given explicitly so Torch-Pruning need not guess."""
    standard = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Embedding)
    owned = {id(p) for m in model.modules() if isinstance(m, standard) for p in m.parameters(recurse=False)}
    out = []
    for m in model.modules():
        if isinstance(m, standard):
            continue
        for p in m.parameters(recurse=False):
            if id(p) not in owned and p.dim() >= 1:
                dims = [d for d, n in enumerate(p.shape) if n > 1]
                if dims:
                    out.append((p, dims[0]))
    return out


def prune_once(model: nn.Module, cfg: Config, ratio: float, *, image_size: int = 32, num_classes: int | None = None,
               importance: str | None = None, group_ratios: dict | None = None) -> nn.Module:
    """A one-shot pruned fp32 copy of `model` on the CPU: `ratio` of the channels removed in one step, allocated as
    cfg says (per layer, or globally), or each group's ratio of `group_ratios`. `importance` defaults to cfg.importance, except taylor, which would need
    gradients: the widths come out the same with L2 under per-layer pruning. Random draws come from a generator
    seeded 0 (the same copy every time); the caller's generators are left as they were. What the target searches
    (targets.py) and the prunability probe cut their candidates with."""
    chosen = importance or ("l2" if cfg.importance == "taylor" else cfg.importance)
    pruned = copy.deepcopy(model).float().cpu()
    if ratio > 0 or group_ratios:
        pruner = build_pruner(pruned, dataclasses.replace(cfg, importance=chosen), pruning_ratio=ratio,
                              iterative_steps=1, image_size=image_size, num_classes=num_classes,
                              group_ratios=group_ratios)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pruner.step()
    return pruned


def check_prunable(model: nn.Module, cfg: Config, image_size: int, num_classes: int, name: str) -> None:
    """Before any training: Torch-Pruning can trace `model` (named `name` in errors) and prune a quarter of its
    channels (on a copy), and the pruned copy still returns (1, num_classes) logits for one image."""
    try:
        probe = prune_once(model, cfg, 0.25, image_size=image_size, num_classes=num_classes, importance="l2")
        with torch.no_grad():
            out = probe.eval()(torch.zeros(1, 3, image_size, image_size))
    except PrunelabError:
        raise
    except Exception as e:  # anything Torch-Pruning or the model raises here means: not prunable as it is
        raise PrunelabError(f"Torch-Pruning cannot prune model '{name}' ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:150] if str(e) else ''}); choose another model") from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        raise PrunelabError(f"model '{name}' returns {type(out).__name__} "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''} for one image, not "
                            f"(1, {num_classes}) logits; prunelab needs a classifier that returns a tensor")


def step_ratio(pruner: tp.pruner.BasePruner, step: int) -> float:
    """Channel pruning ratio the schedule reaches after `step` steps."""
    return float(pruner.per_step_pruning_ratio[step])


def prune_step(pruner: tp.pruner.BasePruner, model: nn.Module, gradient_batches=None) -> dict[str, list[int]]:
    """Remove the next share of channels. For gradient-based importance (taylor), `gradient_batches`
    yields (inputs, labels) whose loss gradients are accumulated first. Returns the out-channel indices removed from
    each module (by name), as they were numbered before the step; a module that several groups cut in one step (a
    batch norm after a concatenation) keeps only the last group's indices, numbered after the earlier cuts."""
    if isinstance(pruner.importance, tp.importance.GroupTaylorImportance):
        if gradient_batches is None:
            raise PrunelabError("taylor importance needs training batches for its gradients")
        model.zero_grad(set_to_none=True)
        model.eval()  # gradients of the deployed (eval-mode) network, BN statistics untouched
        for x, y in gradient_batches:
            F.cross_entropy(model(x), y).backward()
        distributed.average_gradients(model)  # under torchrun every rank must rank channels alike
    names = {m: n for n, m in model.named_modules()}
    removed = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            module = dep.target.module
            if module in names and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                removed[names[module]] = [int(getattr(i, "idx", i)) for i in idxs]
        group.prune()
    model.zero_grad(set_to_none=True)
    return removed


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
    _replay(pruner, pruning_history)
    pruner.current_step = steps_done


def replay_structure(model: nn.Module, pruning_history: list, image_size: int = 32) -> None:
    """Give a freshly built dense model the pruned structure that `pruning_history` describes (its weights
    stay as they are: load the pruned weights afterwards)."""
    if pruning_history:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model, image_size),
                                                      unwrapped_parameters=_unwrapped(model), verbose=False)
        _replay(graph, pruning_history)


# What Torch-Pruning raises when a history names layers the model lacks (AttributeError) or channels it does
# not have (IndexError, RuntimeError from the tensor ops); anything else is a bug and propagates.
_MISMATCH = (AttributeError, KeyError, IndexError, RuntimeError)


def _replay(graph_or_pruner, pruning_history: list) -> None:
    ok = isinstance(pruning_history, list) and all(
        isinstance(h, (list, tuple)) and len(h) == 3 and isinstance(h[0], str) and isinstance(h[2], list)
        for h in pruning_history)
    if not ok:
        raise PrunelabError("the pruning history is not a list of [layer, out-channels?, [indices]] entries; "
                            "the model description is damaged")
    try:
        graph_or_pruner.load_pruning_history([list(h) for h in pruning_history])
    except _MISMATCH as e:
        raise PrunelabError(f"the pruning history does not fit this model ({type(e).__name__}: {str(e)[:120]}); "
                            "the description belongs to another architecture")


def count_macs_params(model: nn.Module, input_size: int = 32) -> tuple[int, int]:
    """MACs and parameters for one image, counted by Torch-Pruning (tp.utils.count_ops_and_params)."""
    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model, example_input(model, input_size))
    model.train(was_training)
    return int(macs), int(params)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution: a readable summary of the pruned structure."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
