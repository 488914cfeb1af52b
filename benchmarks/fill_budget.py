"""A size budget with and without `fill_budget`: uniform pruning at the smallest ratio that meets the budget, then
the groups widened into what rounding left idle, for each round_to; MACs, parameters, widths, and the latency of
all four side by side (alternating rounds, each timing in a fresh session; ratios to the first model per round).

    python benchmarks/fill_budget.py --round-to 2 8 --rounds 5 --json benchmarks/results/fill_budget.json

Latency does not depend on the weights, so one-shot-pruned copies of a randomly initialised ResNet-18 have the
final models' architecture and speed. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from prunelab.config import make_config
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.prune import count_macs_params, group_roots, layer_widths, prune_once
from prunelab.runtimes import latency
from prunelab.targets import fill_budget, ratio_for_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-macs", type=float, default=5.29e6)
    ap.add_argument("--target-params", type=float, default=105428)
    ap.add_argument("--round-to", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/fill_budget.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense = build_model("resnet18_cifar", 10)
    models, rows = {}, []
    for r in args.round_to:
        cfg = make_config("full", {"round_to": r})
        ratio = ratio_for_target(dense, cfg, args.target_macs, args.target_params)
        filled, _ = fill_budget(dense, cfg, ratio, args.target_macs, args.target_params)
        roots = group_roots(dense, cfg, 32, 10)
        for name, kwargs in ((f"round_to {r}", {"ratio": ratio}), (f"round_to {r}, filled", {"ratio": 0.0, "group_ratios": filled})):
            model = prune_once(dense, cfg, image_size=32, num_classes=10, **kwargs).eval()
            macs, params = count_macs_params(model, 32)
            widths = layer_widths(model)
            models[name] = model
            rows.append({"model": name, "round_to": r, "ratio": ratio, "macs": macs, "params": params,
                         "group_widths": {g: widths[g] for g in roots if g in widths}, "ms": []})
    for _ in range(args.rounds):
        for row in rows:
            with tempfile.TemporaryDirectory() as tmp:
                row["ms"].append(latency(models[row["model"]], args.runtime, 32, args.batch_size, tmp))
    first = rows[0]["ms"]
    print(f"| model | MACs | params | ms ({args.runtime}, batch {args.batch_size}), median | vs {rows[0]['model']} |")
    print("| :--- | ---: | ---: | ---: | ---: |")
    for row in rows:
        row["median_ms"] = statistics.median(row["ms"])
        row["ratio_to_first"] = statistics.median(a / b for a, b in zip(row["ms"], first))
        print(f"| {row['model']} | {row['macs'] / 1e6:.2f} M | {row['params']:,} | {row['median_ms']:.3f} | "
              f"{row['ratio_to_first']:.2f}x |")
    write_json(args.json, {"args": vars(args), "machine": machine(), "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
