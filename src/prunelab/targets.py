"""What a budget means: the channel ratio whose one-shot pruning meets a MACs, parameter or latency target, found by
one bisection (`bisect_ratio`) over candidates cut by one one-shot prune (`prune.prune_once`).

    MACs / params   counted by Torch-Pruning on the pruned copy (exact; 14 halvings of [0, MAX_RATIO])
    latency         one batch timed in the chosen runtime on this machine (8 halvings; the noise of five dense
                    timings widens the check at MAX_RATIO)

With per-layer pruning the widths depend on the ratio only; with global pruning also on the weights, so the
searches take the trained dense model.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch.nn as nn

from .config import Config
from .errors import PrunelabError
from .models import ModelSpec, build
from .prune import count_macs_params, prune_once
from .runtimes import latency

# Beyond this share of channels, layers would lose every channel and Torch-Pruning skips them: no search goes further.
MAX_RATIO = 0.95


def bisect_ratio(fits: Callable[[float], bool], iterations: int, lo: float = 0.0, hi: float = MAX_RATIO) -> float:
    """The smallest ratio in (lo, hi] at which `fits(ratio)` holds, to within (hi - lo) / 2**iterations, for a
    `fits` that holds above some ratio and fails below it; `fits(hi)` is assumed to hold."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def ratio_for_target(model: nn.Module, cfg: Config, target_macs: float = 0, target_params: float = 0,
                     iterations: int = 14, image_size: int = 32, num_classes: int | None = None) -> float:
    """The smallest channel ratio whose one-shot pruning of (a copy of) `model` gives at most the target MACs or
    parameters."""
    target = target_macs or target_params

    def cost(ratio: float) -> float:
        macs, params = count_macs_params(prune_once(model, cfg, ratio, image_size=image_size,
                                                    num_classes=num_classes), image_size)
        return macs if target_macs else params

    if cost(MAX_RATIO) > target:
        raise PrunelabError(f"the target of {target:.4g} {'MACs' if target_macs else 'parameters'} is below what "
                            f"pruning {MAX_RATIO:.1%} of the channels reaches; raise the target")
    return bisect_ratio(lambda ratio: cost(ratio) <= target, iterations)


def ratio_for_latency(model: nn.Module, cfg: Config, image_size: int, num_classes: int | None = None,
                      iterations: int = 8) -> dict:
    """The smallest channel ratio whose one-shot pruning of (a copy of) `model` runs one batch of
    cfg.latency_batch_size in at most cfg.target_latency_ms in cfg.latency_runtime on this machine, by bisection
    on timed copies (each timed in one fresh session). The noise is measured first: the dense model timed 5 times,
    (max - min) / median of those medians. Returns ratio, the latency measured at it, the dense latency and the
    noise; with iterations=0, only checks that the target is within reach. Raises PrunelabError when the target
    is not below the dense latency, or when even pruning MAX_RATIO of the channels is too slow (saying how fast
    that is)."""
    target = cfg.target_latency_ms
    with tempfile.TemporaryDirectory() as tmp:
        def at(ratio: float, name: str) -> float:
            work = Path(tmp) / name
            work.mkdir(parents=True, exist_ok=True)
            pruned = prune_once(model, cfg, ratio, image_size=image_size, num_classes=num_classes).eval()
            return latency(pruned, cfg.latency_runtime, image_size, cfg.latency_batch_size, work)

        runs = [at(0.0, "dense") for _ in range(5)]  # one ONNX export, five fresh sessions
        dense = sorted(runs)[2]
        noise = (max(runs) - min(runs)) / dense
        if target >= dense:
            raise PrunelabError(f"target_latency_ms {target:g} is not below the dense model's {dense:.3g} ms "
                                f"({cfg.latency_runtime}, batch {cfg.latency_batch_size}); lower it or drop it")
        fastest = at(MAX_RATIO, "max")
        if fastest > target * (1 + noise):
            raise PrunelabError(f"target_latency_ms {target:g} is out of reach: pruning {MAX_RATIO:.0%} of the channels "
                                f"runs in {fastest:.3g} ms ({cfg.latency_runtime}, batch {cfg.latency_batch_size}, "
                                "this machine); raise the target to at least that")
        timed = {MAX_RATIO: fastest}

        def fits(ratio: float) -> bool:
            timed[ratio] = at(ratio, f"r{len(timed)}")
            return timed[ratio] <= target

        ratio = bisect_ratio(fits, iterations)
    return {"ratio": ratio, "latency_ms": timed[ratio], "dense_latency_ms": dense, "noise": noise}


def check_targets(cfg: Config, spec: ModelSpec, image_size: int = 32, dense: nn.Module | None = None) -> None:
    """Before any training: a MACs or parameter target lies below the dense model's; a latency target is within
    reach (timed: the dense model and the MAX_RATIO one)."""
    if not (cfg.target_macs or cfg.target_params or cfg.target_latency_ms):
        return
    model = dense if dense is not None else build(spec)
    if cfg.target_latency_ms:
        ratio_for_latency(model, cfg, image_size, spec.num_classes, iterations=0)
        return
    macs, params = count_macs_params(model, image_size)
    if cfg.target_macs >= macs:
        raise PrunelabError(f"config: target_macs {cfg.target_macs:.4g} is not below the dense model's {macs:.4g} MACs; "
                            "lower it or drop it")
    if cfg.target_params >= params:
        raise PrunelabError(f"config: target_params {cfg.target_params:.4g} is not below the dense model's {params:,} "
                            "parameters; lower it or drop it")
