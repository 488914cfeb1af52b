"""How long a MACs/parameter target's search takes (`targets.ratio_for_target`, then `targets.fill_budget`), against
the same search in an earlier commit's targets.py, side by side in one process on one thread: the widths each finds
(they must be equal), the number of one-shot cuts each counted, and seconds (alternating which goes first).

    python benchmarks/size_search_time.py --before 9b9f226~1 --json benchmarks/results/size_search_time.json

Randomly initialised models: a size search depends on the architecture, not the weights, under per-layer pruning.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch

from prunelab import targets
from prunelab.config import make_config
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # model, round_to (None: the preset's), MACs target, params target
    ("resnet18_cifar", None, 2e6, 0), ("resnet18_cifar", None, 5e6, 0), ("resnet18_cifar", None, 2e7, 0),
    ("resnet18_cifar", 8, 5.29e6, 105428), ("resnet18_cifar", None, 0, 1e5), ("mobilenet_v2", 8, 2e6, 0),
]


def targets_at(commit: str):
    """prunelab.targets as it was at `commit` (imported as a submodule of prunelab, so its relative imports resolve)."""
    source = subprocess.run(["git", "show", f"{commit}:src/prunelab/targets.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(targets.__file__).with_name("_targets_before.py")
    path.write_text(source)
    try:
        spec = importlib.util.spec_from_file_location("prunelab._targets_before", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        path.unlink()
    return module


def timed_search(module, model, cfg, macs: float, params: float) -> dict:
    cuts = [0]
    count = module.count_macs_params

    def counting(*args, **kwargs):
        cuts[0] += 1
        return count(*args, **kwargs)

    module.count_macs_params = counting
    try:
        start = time.perf_counter()
        ratio = module.ratio_for_target(model, cfg, macs, params)
        filled = module.fill_budget(model, cfg, ratio, macs, params)
        seconds = time.perf_counter() - start
    finally:
        module.count_macs_params = count
    return {"ratio": ratio, "group_ratios": filled[0] if filled else None, "size": list(filled[1]) if filled else None,
            "cuts": cuts[0], "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="commit whose targets.py is the reference")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    before = targets_at(args.before)
    rows = []
    print(f"{'model':16} {'round_to':>8} {'MACs':>9} {'params':>8} | {'cuts before':>11} {'now':>5} | "
          f"{'s before':>8} {'s now':>6} {'ratio':>6} | same widths")
    for i, (name, round_to, macs, params) in enumerate(CASES):
        cfg = make_config("quick", {"round_to": round_to} if round_to else {})
        model = build_model(name, 10)
        order = [("before", before), ("now", targets)] if i % 2 == 0 else [("now", targets), ("before", before)]
        result = {label: timed_search(module, model, cfg, macs, params) for label, module in order}
        same = all(result["now"][k] == result["before"][k] for k in ("ratio", "group_ratios", "size"))
        rows.append({"model": name, "round_to": cfg.round_to, "target_macs": macs, "target_params": params,
                     **{f"{k}_{label}": result[label][k] for label in ("before", "now") for k in ("cuts", "seconds")},
                     "size": result["now"]["size"], "same_widths": same})
        r = rows[-1]
        print(f"{name:16} {cfg.round_to:>8} {macs:>9.3g} {params:>8.3g} | {r['cuts_before']:>11} {r['cuts_now']:>5} | "
              f"{r['seconds_before']:>8.1f} {r['seconds_now']:>6.1f} {r['seconds_before'] / r['seconds_now']:>5.2f}x | "
              f"{same}", flush=True)
    if args.json:
        write_json(args.json, {"before": args.before, "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
