"""What a budget means: the channel ratio whose one-shot pruning meets a MACs, parameter or latency target, found by
one bisection (`bisect_ratio`; for latency a grid first, `smallest_fitting_ratio`) over candidates cut by one
one-shot prune (`prune.prune_once`); and the width search
(`search_widths`), which allocates the budget across the prunable groups and scales each candidate the same way.

    MACs / params   counted by Torch-Pruning on the pruned copy (exact; 14 halvings of [0, MAX_RATIO]); then
                    `fill_budget` widens groups one rounding step at a time into what rounding left idle; a
                    search candidate under both limits is first tilted (`balance_candidate`) until both bind
    latency         one batch timed in the chosen runtime on this machine (a grid of 12 ratios, 4 halvings from
                    the smallest that fits, re-timed: latency is not monotone in the ratio; the noise of five
                    dense timings widens the check at MAX_RATIO); a speed-up target is the dense model's latency,
                    timed first in the same search, over the speed-up

With per-layer pruning the widths depend on the ratio only; with global pruning also on the weights, so the
searches take the trained dense model.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .config import Config, latency_targeted
from .errors import PrunelabError
from .measurement import load_mark, other_cores
from .models import ModelSpec, build
from .prune import count_macs_params, group_roots, is_global, layer_widths, prune_once
from .runtimes import latency

# Beyond this share of channels, layers would lose every channel and Torch-Pruning skips them: no search goes further.
MAX_RATIO = 0.95
# A latency target's search (smallest_fitting_ratio): grid points over (0, MAX_RATIO], then halvings.
LATENCY_POINTS, LATENCY_ITERATIONS = 12, 4
# Seconds of timing per candidate in a latency search, at most (less where cfg.latency_min_seconds asks for less).
SEARCH_SECONDS = 0.3
# How the width search draws and sizes its candidates, in each search.jsonl row: a resumed search scores rows of
# another version again rather than rank them beside its own (2: candidates tilted under two limits, RESULTS 7.30;
# rows without it are 1, drawn and scaled only).
SEARCH_VERSION = 2


def row_version(row: dict) -> int:
    """The SEARCH_VERSION a search.jsonl row was scored by (rows of the first tilted searches carry no version but
    record "filled"; rows before the tilt carry neither)."""
    return row.get("version", 2 if "filled" in row else 1)


def search_seconds(cfg: Config) -> float:
    """How long a latency search times each candidate: SEARCH_SECONDS, or cfg.latency_min_seconds where the user
    asked every timing to be shorter (a quick look, a slow machine; fewer timed passes, noisier medians)."""
    return min(SEARCH_SECONDS, cfg.latency_min_seconds)


def sizing_importance(cfg: Config) -> str | None:
    """The importance that the MACs/parameter searches cut their candidates with. Under per-layer allocation a group
    keeps the number of channels its ratio fixes, whichever channels go, so "random" gives the same sizes as the
    norms of every weight at about half the time (RESULTS 6). None (cfg's own) where the criterion sets the widths:
    global pruning ranks channels across layers, and bn_scale scores only groups with a batch norm (Torch-Pruning
    leaves the others whole, which random would cut)."""
    return None if is_global(cfg) or cfg.importance == "bn_scale" else "random"


def bisect_ratio(fits: Callable[[float], bool], iterations: int, lo: float = 0.0, hi: float = MAX_RATIO) -> float:
    """The smallest ratio in (lo, hi] at which `fits(ratio)` holds, to within (hi - lo) / 2**iterations, for a
    `fits` that holds above some ratio and fails below it; `fits(hi)` is assumed to hold."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def ratio_for_target(model: nn.Module, cfg: Config, target_macs: float = 0, target_params: float = 0,
                     iterations: int = 14, image_size: int = 32, num_classes: int | None = None) -> float:
    """The smallest channel ratio whose one-shot pruning of (a copy of) `model` gives at most the target MACs and/or
    parameters (each one given; 0 = no limit)."""
    budget = {"macs": target_macs, "params": target_params}

    def pruned(ratio: float) -> nn.Module:
        return prune_once(model, cfg, ratio, image_size=image_size, num_classes=num_classes,
                          importance=sizing_importance(cfg))

    over = _over_budget(budget, pruned(MAX_RATIO), image_size)
    if over:
        unit, limit, value = over
        raise PrunelabError(f"the target of {limit:.4g} {unit} is below what pruning {MAX_RATIO:.0%} of the channels "
                            f"reaches ({value:.4g} {unit}); raise the target to at least {value:.4g}")
    return bisect_ratio(lambda ratio: not _over_budget(budget, pruned(ratio), image_size), iterations)


def fill_budget(model: nn.Module, cfg: Config, ratio: float, target_macs: float = 0, target_params: float = 0,
                image_size: int = 32, num_classes: int | None = None,
                group_ratios: dict[str, float] | None = None) -> tuple[dict[str, float], tuple[int, int]] | None:
    """Per-group ratios that spend what rounding leaves of a MACs/parameter budget. Uniform pruning at `ratio` (the
    smallest that meets the budget) rounds every group's kept channels down to a multiple of cfg.round_to, and the
    next lower ratio widens every group at once: with round_to 8 at the seed's size, 40% of the parameter budget
    stayed idle (RESULTS 7.10), and leaving a budget idle loses accuracy (7.8). A width-search candidate
    (`group_ratios`, which then replace the uniform `ratio`) scaled until one limit binds leaves the other idle: one
    searched model at the seed's size kept 31% fewer parameters than uniform (7.29; balance_candidate tilts it first,
    this spends what is left). So, from the uniform widths at `ratio` (or the candidate's), widen one group by
    cfg.round_to channels at a time while the pruned model still meets the budget, choosing the widening that takes
    the smallest share of what is left of the scarcer limit (its cost measured on the pruned copy, re-measured when
    stale); a group that no longer fits is not tried again (the cost of widening
    it only grows). Returns ({group root: ratio} for build_pruner's group_ratios, (MACs, parameters) of the filled
    model), or None when no group could be widened (the start stands)."""
    roots = group_roots(model, cfg, image_size, num_classes)
    step = max(cfg.round_to, 1)
    limits = [target_macs or float("inf"), target_params or float("inf")]

    def ratios(widths: dict[str, int]) -> dict[str, float]:  # Torch-Pruning keeps int(channels * (1 - ratio))
        return {g: (roots[g] - widths[g] - 0.5) / roots[g] for g in roots}

    sizes = {}  # widths -> (MACs, params): a candidate re-chosen after its cost was found stale is not re-cut

    def size(widths: dict[str, int]) -> tuple[int, int]:
        key = tuple(widths[g] for g in roots)
        if key not in sizes:
            sizes[key] = count_macs_params(prune_once(model, cfg, 0.0, image_size=image_size, num_classes=num_classes,
                                                      group_ratios=ratios(widths), importance=sizing_importance(cfg)),
                                           image_size)
        return sizes[key]

    start = prune_once(model, cfg, 0.0 if group_ratios else ratio, image_size=image_size, num_classes=num_classes,
                       importance=sizing_importance(cfg), group_ratios=group_ratios)
    modules = dict(start.named_modules())
    keep = {g: getattr(modules[g], "out_channels", getattr(modules[g], "out_features", None)) for g in roots}
    if None in keep.values():
        return None  # a group whose width this cannot read: the start stands
    now, grown = count_macs_params(start, image_size), False
    cost = {g: None for g in roots if keep[g] + step <= roots[g]}  # g -> (MACs, params) its widening adds

    def share(g: str) -> float:  # of what is left of the scarcer limit
        return max(d / (limit - used) if limit - used > 0 else float("inf")
                   for d, limit, used in zip(cost[g], limits, now))

    while cost:
        for g in [g for g in cost if cost[g] is None]:
            wider = size({**keep, g: keep[g] + step})
            cost[g] = (wider[0] - now[0], wider[1] - now[1])
        g = min(cost, key=lambda g: (share(g), g))
        wider = {**keep, g: keep[g] + step}
        after = size(wider)
        if any(value > limit for value, limit in zip(after, limits)):
            del cost[g]  # (cost only grows as the others widen)
            continue
        if (after[0] - now[0], after[1] - now[1]) != cost[g]:
            cost[g] = (after[0] - now[0], after[1] - now[1])  # stale: the others widened since; choose again
            continue
        keep, now, grown = wider, after, True
        cost = {h: (None if h == g else c) for h, c in cost.items() if h != g or keep[g] + step <= roots[g]}
    return (ratios(keep), now) if grown else None


def _over_budget(budget: dict, pruned: nn.Module, image_size: int) -> tuple[str, float, int] | None:
    """None when `pruned` meets every limit of `budget` ({"macs": ..., "params": ...}, 0 = none), else the first
    limit it exceeds: (unit, limit, the model's count), e.g. ("MACs", 5.29e6, 6100000)."""
    macs, params = count_macs_params(pruned, image_size)
    for unit, limit, value in (("MACs", budget.get("macs"), macs), ("parameters", budget.get("params"), params)):
        if limit and value > limit:
            return unit, limit, value
    return None


def _median(times: list[float]) -> float:
    """The lower median: with two timings, the faster (timing noise only ever slows a run down)."""
    return sorted(times)[(len(times) - 1) // 2]


def smallest_fitting_ratio(time_at: Callable[[float], float], target: float, timed: dict[float, list[float]],
                           points: int = 12, iterations: int = 4, confirm: int = 2, hi: float = MAX_RATIO) -> float:
    """The smallest ratio whose timing `time_at(ratio)` (ms) is at most `target`, for a timing that is NOT monotone
    in the ratio: a runtime picks its kernels by channel count, so a wider model can run faster than a narrower one
    (RESULTS 7.10), and a bisection stops wherever its first halvings land. So: time `points` ratios evenly spread
    over (0, hi]; from the smallest that fits, bisect `iterations` times towards the grid point below it; then time
    the answer `confirm` times more and keep it only if the median of its timings fits (one lucky timing does not
    pass), else the grid point it came from, else the next fitting grid point. A band that fits but holds no grid
    point (narrower than hi / points) is not found. Every timing goes into `timed` (ratio -> ms; may hold timings
    already taken). Returns `hi` when nothing is confirmed: the caller has checked that `hi` is within reach."""
    def fits(ratio: float, times: int = 1) -> bool:
        timed.setdefault(ratio, [])
        while len(timed[ratio]) < times:
            timed[ratio].append(time_at(ratio))
        return _median(timed[ratio]) <= target

    grid = [hi * k / points for k in range(1, points + 1)]
    for r in [r for r in grid if fits(r)]:
        below = grid[grid.index(r) - 1] if r != grid[0] else 0.0
        best = bisect_ratio(fits, iterations, lo=below, hi=r)
        for ratio in dict.fromkeys((best, r)):  # the refined ratio, else the grid point it came from
            if fits(ratio, 1 + confirm):
                return ratio
    return hi


def ratio_for_latency(model: nn.Module, cfg: Config, image_size: int, num_classes: int | None = None,
                      iterations: int = LATENCY_ITERATIONS, points: int = LATENCY_POINTS,
                      reference: nn.Module | None = None) -> dict:
    """The smallest channel ratio whose one-shot pruning of (a copy of) `model` runs one batch of
    cfg.latency_batch_size in at most the target in cfg.latency_runtime on this machine: cfg.target_latency_ms, or
    the latency of `reference` (the dense model as the user has it, when `model` is it less --drop-blocks' blocks;
    default `model`; ignored for a ms target) over cfg.target_speedup, timed first, here. A grid of `points` ratios
    refined by `iterations` halvings and confirmed by re-timing (`smallest_fitting_ratio`), each timing in one
    fresh session. The noise is
    measured first: the dense model timed 5 times, (max - min) / median of those medians. Returns ratio, the
    latency at it (the median the search judged), whether that fits the target (False only when nothing fit and
    MAX_RATIO, within the noise of the target, is returned), the target in ms, the dense latency (and the
    reference's, when given), the noise, the number of timings and the CPU cores other processes kept busy
    meanwhile (measurement.other_cores: timings on a busy machine do not hold on a quiet one); with iterations=0,
    only checks that the target is within reach. Raises PrunelabError when the target is not below the dense
    latency, or when even pruning MAX_RATIO of the channels is too slow (saying how fast that is)."""
    where = f"{cfg.latency_runtime}, batch {cfg.latency_batch_size}"
    mark = load_mark()
    with tempfile.TemporaryDirectory() as tmp:
        count = [0]

        def at(ratio: float, name: str = "", of: nn.Module = model) -> float:
            count[0] += 1
            work = Path(tmp) / (name or f"r{count[0]}")
            work.mkdir(parents=True, exist_ok=True)
            pruned = prune_once(of, cfg, ratio, image_size=image_size, num_classes=num_classes).eval()
            return latency(pruned, cfg.latency_runtime, image_size, cfg.latency_batch_size, work,
                           min_seconds=search_seconds(cfg))

        runs = [at(0.0, "dense") for _ in range(5)]  # one ONNX export, five fresh sessions
        dense = sorted(runs)[2]
        noise = (max(runs) - min(runs)) / dense
        timed_reference = reference is not None and bool(cfg.target_speedup)  # (a ms target needs no reference)
        ref = sorted(at(0.0, "reference", reference) for _ in range(5))[2] if timed_reference else dense
        target = cfg.target_latency_ms or ref / cfg.target_speedup
        if cfg.target_latency_ms and target >= dense:
            raise PrunelabError(f"target_latency_ms {target:g} is not below the {dense:.3g} ms of "
                                f"{_dense_name(cfg.drop_blocks)} ({where}); lower it or "
                                "drop it" + (" (or remove fewer blocks)" if cfg.drop_blocks else ""))
        fastest = at(MAX_RATIO, "max")
        if fastest > target * (1 + noise):
            if cfg.target_speedup:
                raise PrunelabError(f"target_speedup {cfg.target_speedup:g} is out of reach: pruning {MAX_RATIO:.0%} of "
                                    f"the channels runs {ref / fastest:.3g}x as fast as the dense model ({fastest:.3g} "
                                    f"against {ref:.3g} ms, {where}, this machine); lower the speed-up to at most that")
            raise PrunelabError(f"target_latency_ms {target:g} is out of reach: pruning {MAX_RATIO:.0%} of the channels "
                                f"runs in {fastest:.3g} ms ({where}, this machine); raise the target to at least that")
        timed = {MAX_RATIO: [fastest]}
        ratio = smallest_fitting_ratio(at, target, timed, points=points, iterations=iterations) if iterations \
            else MAX_RATIO
    ms = _median(timed[ratio])
    return {"ratio": ratio, "latency_ms": ms, "fits": ms <= target, "target_ms": target, "dense_latency_ms": dense,
            **({"reference_latency_ms": ref} if timed_reference else {}), "noise": noise, "timings": count[0],
            "other_cores": other_cores(mark)}


def _dense_name(dropped_blocks) -> str:
    """What the targets are measured against: the dense model, less the blocks --drop-blocks removes."""
    return "the dense model" + (f" without {' '.join(dropped_blocks)}" if dropped_blocks else "")


def check_targets(cfg: Config, spec: ModelSpec, image_size: int = 32, dense: nn.Module | None = None,
                  reference: nn.Module | None = None) -> None:
    """Before any training: MACs and parameter targets lie below the dense model's and within reach of MAX_RATIO;
    a latency target is within reach (timed: the dense model and the MAX_RATIO one). `spec` and `dense` are those of
    the network the cuts start from: with --drop-blocks, the dense model without its dropped blocks; `reference`,
    then, the dense model with them, which a speed-up is measured against (default: built from `spec` with no
    block dropped)."""
    if not (cfg.target_macs or cfg.target_params or latency_targeted(cfg)):
        return
    model = dense if dense is not None else build(spec)
    if latency_targeted(cfg):
        if reference is None and cfg.target_speedup and spec.dropped_blocks:  # against the model the user has
            reference = build(dataclasses.replace(spec, dropped_blocks=()))
        ratio_for_latency(model, cfg, image_size, spec.num_classes, iterations=0, reference=reference)
        return
    macs, params = count_macs_params(model, image_size)
    name, fewer = _dense_name(spec.dropped_blocks), " (or remove fewer blocks)" if spec.dropped_blocks else ""
    if cfg.target_macs and cfg.target_macs >= macs:
        raise PrunelabError(f"config: target_macs {cfg.target_macs:.4g} is not below the {macs:.4g} MACs of {name}; "
                            f"lower it or drop it{fewer}")
    if cfg.target_params and cfg.target_params >= params:
        raise PrunelabError(f"config: target_params {cfg.target_params:.4g} is not below the {params:,} parameters "
                            f"of {name}; lower it or drop it{fewer}")
    # the smallest model any allocation reaches: every group cut by MAX_RATIO
    over = _over_budget(_size_budget(cfg), prune_once(model, cfg, MAX_RATIO, image_size=image_size,
                                                      num_classes=spec.num_classes,
                                                      importance=sizing_importance(cfg)), image_size)
    if over:
        unit, limit, value = over
        raise PrunelabError(f"config: the target of {limit:.4g} {unit} is below what any pruning reaches (cutting "
                            f"{MAX_RATIO:.0%} of every group's channels leaves {value:.4g}); raise the target to at "
                            f"least {value:.4g}")


# ----------------------------------------------------------------------------- width search

def candidate_ratios(roots: dict[str, int], multipliers: dict[str, float], u: float) -> dict[str, float]:
    """Each group's ratio for a candidate: with u the ratio a group of multiplier 1 gets, a group of multiplier m
    keeps (1 - u) ** m of its channels (m > 1: cut harder, m < 1: spared), at most MAX_RATIO cut. Multipliers of 1
    everywhere are uniform allocation at ratio u."""
    return {name: min(MAX_RATIO, 1 - (1 - u) ** multipliers[name]) for name in roots}


def draw_multipliers(roots: dict[str, int], index: int, seed: int, spread: float = 0.5) -> dict[str, float]:
    """Candidate `index`'s multipliers: all 1 for candidate 0 (uniform allocation, so the search never ranks below
    it on its own proxy), else each drawn from U(1 - spread, 1 + spread) with a generator seeded by (seed, index):
    the same candidates on every run and every resume."""
    if index == 0:
        return {name: 1.0 for name in roots}
    g = torch.Generator().manual_seed(seed * 100_003 + index)
    draws = (1 - spread + 2 * spread * torch.rand(len(roots), generator=g, dtype=torch.float64)).tolist()
    return dict(zip(roots, draws))


def scale_candidate(model: nn.Module, cfg: Config, roots: dict[str, int], multipliers: dict[str, float], *,
                    image_size: int, num_classes: int, iterations: int = 10,
                    target_ms: float = 0.0, fallback: bool = False) -> tuple[float, nn.Module, float | None] | None:
    """The candidate `multipliers` (one per group root) scaled until its one-shot pruning of `model` just meets
    cfg's target: (u, the pruned copy, its latency in ms or None), or None where even MAX_RATIO does not meet it.
    MACs and parameters by a bisection of `iterations` halvings (counts fall steadily as u grows); latency (of at
    most `target_ms`, default cfg.target_latency_ms) by the grid and re-timing of `smallest_fitting_ratio`, as
    `ratio_for_latency` (timings do not fall steadily). `fallback`: for a latency target that even MAX_RATIO misses,
    return MAX_RATIO rather than None (check_targets let it through as within the timing noise: the uniform candidate
    then ends where ratio_for_latency would)."""
    target_ms = target_ms or cfg.target_latency_ms

    def pruned_at(u: float, importance: str | None = None) -> nn.Module:
        return prune_once(model, cfg, 0.0, image_size=image_size, num_classes=num_classes,
                          group_ratios=candidate_ratios(roots, multipliers, u), importance=importance)

    if target_ms:
        def time_at(u: float) -> float:
            with tempfile.TemporaryDirectory() as tmp:
                return latency(pruned_at(u).eval(), cfg.latency_runtime, image_size, cfg.latency_batch_size, tmp,
                               min_seconds=search_seconds(cfg))

        timed = {MAX_RATIO: [time_at(MAX_RATIO)]}
        if timed[MAX_RATIO][0] > target_ms:
            return (MAX_RATIO, pruned_at(MAX_RATIO), timed[MAX_RATIO][0]) if fallback else None
        u = smallest_fitting_ratio(time_at, target_ms, timed, points=LATENCY_POINTS,
                                   iterations=LATENCY_ITERATIONS)
        return u, pruned_at(u), _median(timed[u])

    u = size_ratio(model, cfg, roots, multipliers, image_size=image_size, num_classes=num_classes,
                   iterations=iterations)
    return None if u is None else (u, pruned_at(u), None)


def size_ratio(model: nn.Module, cfg: Config, roots: dict[str, int], multipliers: dict[str, float], *,
               image_size: int, num_classes: int, iterations: int = 10) -> float | None:
    """The u at which the candidate `multipliers` (candidate_ratios) just meets cfg's MACs/parameter budget, by a
    bisection of `iterations` halvings over copies cut with sizing_importance; None where even MAX_RATIO does not."""
    def fits(u: float) -> bool:
        return not _over_budget(_size_budget(cfg), prune_once(
            model, cfg, 0.0, image_size=image_size, num_classes=num_classes,
            group_ratios=candidate_ratios(roots, multipliers, u), importance=sizing_importance(cfg)), image_size)

    return bisect_ratio(fits, iterations) if fits(MAX_RATIO) else None


def macs_per_param(model: nn.Module, cfg: Config, roots: dict[str, int], *, image_size: int,
                   num_classes: int) -> dict[str, float]:
    """Each group's log MACs per parameter, centred on the groups' mean and scaled into [-1, 1]: what halving that
    group alone removes from `model`, counted (a channel at 32x32 costs 64x the MACs per parameter of one at 4x4 in
    ResNet-18). A group that halving leaves whole (narrower than cfg.round_to, or not cut by the criterion) scores 0,
    the mean. balance_candidate tilts candidates along it."""
    full = count_macs_params(model, image_size)
    logs = {}
    for g in roots:
        macs, params = count_macs_params(prune_once(model, cfg, 0.0, image_size=image_size, num_classes=num_classes,
                                                    group_ratios={g: 0.5}, importance=sizing_importance(cfg)),
                                         image_size)
        if macs < full[0] and params < full[1]:
            logs[g] = math.log((full[0] - macs) / (full[1] - params))
    mean = sum(logs.values()) / len(logs) if logs else 0.0
    reach = max((abs(v - mean) for v in logs.values()), default=0.0) or 1.0
    return {g: (logs[g] - mean) / reach if g in logs else 0.0 for g in roots}


def balance_candidate(model: nn.Module, cfg: Config, roots: dict[str, int], multipliers: dict[str, float],
                      scores: dict[str, float], *, image_size: int, num_classes: int, iterations: int = 10,
                      tilts: int = 5, span: float = 2.0) -> tuple[float, dict[str, float]] | None:
    """Under a MACs and a parameter limit both, a candidate scaled until one binds leaves the other idle (a
    searched model at the seed's size kept 31% fewer parameters than uniform, RESULTS 7.29) and what a budget leaves
    idle loses accuracy (7.8). So tilt the candidate: multiplier m of a group whose log MACs per parameter is s
    (macs_per_param) becomes m * exp(t * s), t > 0 cutting the MAC-heavy groups harder and sparing the
    parameter-heavy ones (t < 0 the reverse). Each tilt is scaled by size_ratio; the far end (t = +-span) first,
    then `tilts` - 1 halvings towards the tilt where the binding limit changes; the tilt whose scaled candidate
    uses the most of its less used limit wins. Returns (u, the tilted multipliers), or None where even MAX_RATIO
    does not meet the budget untilted."""
    def tilted(t: float) -> dict[str, float]:
        return {g: m * math.exp(t * scores[g]) for g, m in multipliers.items()}

    def sized(t: float) -> tuple[float, tuple[float, float]] | None:  # (u, the shares of both limits it uses)
        u = size_ratio(model, cfg, roots, tilted(t), image_size=image_size, num_classes=num_classes,
                       iterations=iterations)
        if u is None:
            return None
        macs, params = count_macs_params(prune_once(model, cfg, 0.0, image_size=image_size, num_classes=num_classes,
                                                    group_ratios=candidate_ratios(roots, tilted(t), u),
                                                    importance=sizing_importance(cfg)), image_size)
        return u, (macs / cfg.target_macs, params / cfg.target_params)

    start = sized(0.0)
    if start is None:
        return None
    toward = 1.0 if start[1][0] > start[1][1] else -1.0  # MACs bind: cut the MAC-heavy groups harder
    best_t, (best_u, used) = 0.0, start
    best_least = min(used)  # the share its less used limit reaches
    lo, hi = 0.0, toward * span
    for i in range(tilts):
        t = hi if i == 0 else (lo + hi) / 2  # the far end first: if it is not past balance, it is the best
        at = sized(t)
        if at is not None and min(at[1]) > best_least:
            best_t, best_u, best_least = t, at[0], min(at[1])
        if at is None or (at[1][0] > at[1][1]) != (toward > 0):
            hi = t  # tilted past balance (or out of reach): back off
        elif i == 0:
            break
        else:
            lo = t
    return best_u, tilted(best_t)


def search_widths(model: nn.Module, cfg: Config, *, image_size: int, num_classes: int,
                  proxy: Callable[[nn.Module], float], done: list[dict] | None = None,
                  record: Callable[[dict], None] | None = None, iterations: int = 10,
                  reference: nn.Module | None = None) -> dict:
    """Widths for the budget (cfg.target_macs / target_params / target_latency_ms / target_speedup) that keep the most
    accuracy, by random search over cfg.search_budget candidates (EagleEye, Li et al., ECCV 2020): each candidate is
    a vector of per-group multipliers (draw_multipliers); scale_candidate scales it until its one-shot pruning of
    `model` just meets the target (under a MACs and a parameter limit, with cfg.fill_budget, balance_candidate tilts
    it until both bind; fill_budget then spends what rounding leaves, the row's "filled"); `proxy(pruned)` scores
    the pruned copy (the pipeline re-estimates its batch-norm statistics on training images and returns its accuracy
    on the validation split). `done`: candidate rows already scored (a resumed search), `record(row)`: called with
    each new row before the next starts. A speed-up is turned into ms once, by timing `reference` (default `model`:
    see ratio_for_latency) before the first candidate; each row records the target it was scaled to, and a resumed
    search takes it from the rows done (so a killed search resumes to the same widths however the machine's speed
    has moved). Returns the best row (candidate 0, uniform, wins ties) with every row under "candidates" (and, for a
    latency target, the CPU cores other processes kept busy during this search: "other_cores")."""
    roots = group_roots(model, cfg, image_size, num_classes)
    rows, mark = list(done or []), load_mark()
    target_ms = cfg.target_latency_ms
    recorded = [r["target_ms"] for r in rows if "target_ms" in r]
    if cfg.target_speedup and recorded:  # a resumed search keeps the target its first candidates were scaled to
        target_ms = recorded[0]
    elif cfg.target_speedup and len(rows) < cfg.search_budget:
        target_ms = ratio_for_latency(model, cfg, image_size, num_classes, iterations=0, reference=reference)["target_ms"]
    both = fills_budget(cfg) and bool(cfg.target_macs and cfg.target_params) and len(rows) < cfg.search_budget
    scores = macs_per_param(model, cfg, roots, image_size=image_size, num_classes=num_classes) if both else None
    for index in range(len(rows), cfg.search_budget):
        start = time.perf_counter()
        multipliers = draw_multipliers(roots, index, cfg.seed)
        if scores and index > 0:  # (uniform allocation, candidate 0, is left as uniform pruning gives it)
            balanced = balance_candidate(model, cfg, roots, multipliers, scores, image_size=image_size,
                                         num_classes=num_classes, iterations=iterations)
            scaled = None if balanced is None else (balanced[0], None, None)  # (cut below, once)
            multipliers = multipliers if balanced is None else balanced[1]  # (tilted)
        else:
            scaled = scale_candidate(model, cfg, roots, multipliers, image_size=image_size, num_classes=num_classes,
                                     iterations=iterations, target_ms=target_ms, fallback=index == 0)
        if scaled is None:  # this direction cannot reach the budget: skipped
            row = {"index": index, "version": SEARCH_VERSION, "feasible": False, "multipliers": multipliers,
                   **({"target_ms": target_ms} if target_ms else {})}
        else:
            u, pruned, ms = scaled
            ratios, filled = candidate_ratios(roots, multipliers, u), None
            if fills_budget(cfg):  # what rounding (or the limit that did not bind) left idle is spent too
                filled = fill_budget(model, cfg, u, cfg.target_macs, cfg.target_params, image_size=image_size,
                                     num_classes=num_classes, group_ratios=ratios)
            if filled:
                ratios = filled[0]
            if filled or pruned is None:
                pruned = prune_once(model, cfg, 0.0, image_size=image_size, num_classes=num_classes,
                                    group_ratios=ratios)
            macs, params = count_macs_params(pruned, image_size)
            row = {"index": index, "version": SEARCH_VERSION, "feasible": True, "multipliers": multipliers, "u": u,
                   "filled": bool(filled),
                   "group_ratios": ratios, "macs": macs, "params": params,
                   **({"latency_ms": ms, "target_ms": target_ms} if ms is not None else {}),
                   "widths": layer_widths(pruned), "proxy_accuracy": proxy(pruned)}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if record is not None:
            record(row)
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        raise PrunelabError("no width candidate meets the target; raise the target")
    best = max(feasible, key=lambda r: (r["proxy_accuracy"], -r["index"]))
    return {**best, "group_channels": roots, "candidates": rows, "seconds": sum(r["seconds"] for r in rows),
            **({"other_cores": other_cores(mark)} if latency_targeted(cfg) else {})}


def fills_budget(cfg: Config) -> bool:
    """Whether pruned widths are widened into what a MACs/parameter budget leaves idle (fill_budget): on by
    cfg.fill_budget, for a size target under per-layer allocation (a global ranking sets the widths itself)."""
    return cfg.fill_budget and bool(cfg.target_macs or cfg.target_params) and not latency_targeted(cfg) \
        and not is_global(cfg)


def _size_budget(cfg: Config) -> dict:
    return {"macs": cfg.target_macs, "params": cfg.target_params}
