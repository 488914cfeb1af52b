"""What the width search spends on sizing its candidates, with and without `--fill-budget` (the tilt towards an idle
limit and the widening into what rounding leaves, RESULTS 7.30): `targets.search_widths` with a proxy that scores
nothing, so the seconds are the scaling, tilting and filling alone (a run adds the proxy's fine-tune per candidate),
and how much of each limit the candidates use.

    python benchmarks/search_scaling_time.py --json benchmarks/results/search_scaling_time.json

Randomly initialised models: the sizes depend on the architecture, not the weights, under per-layer pruning.
`full`'s settings (round_to 2), seed 0, 16 candidates. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import time

import torch

from prunelab.config import make_config
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.targets import search_widths

CASES = [("the seed's size", 5.29e6, 105428), ("10x fewer MACs", 5.57e7, 0)]  # name, MACs target, params target


def measure(macs: float, params: float, fill: bool, candidates: int) -> dict:
    cfg = make_config("full", {"target_macs": macs, "target_params": params, "seed": 0, "allocation": "search",
                               "val_size": 5000, "search_budget": candidates, "fill_budget": fill})
    model = build_model(cfg.model, 10, small_input_stem=cfg.small_input_stem)
    start = time.perf_counter()
    result = search_widths(model, cfg, image_size=32, num_classes=10, proxy=lambda pruned: 0.0)
    seconds = time.perf_counter() - start
    used = [min(c["macs"] / macs, c["params"] / params if params else 1.0)
            for c in result["candidates"] if c["feasible"]]
    return {"fill_budget": fill, "seconds": seconds, "feasible": len(used), "least_used_share": min(used)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = []
    print(f"{'target':<16} {'fill_budget':>11} {'seconds':>8} {'feasible':>8} {'least-used limit share':>22}")
    for name, macs, params in CASES:
        for fill in (False, True):
            row = {"target": name, "target_macs": macs, "target_params": params,
                   **measure(macs, params, fill, args.candidates)}
            rows.append(row)
            print(f"{name:<16} {str(fill):>11} {row['seconds']:>8.1f} {row['feasible']:>8} "
                  f"{row['least_used_share']:>22.1%}", flush=True)
    if args.json:
        write_json(args.json, {"machine": machine(), "candidates": args.candidates, "rows": rows})


if __name__ == "__main__":
    main()
