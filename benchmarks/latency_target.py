"""--target-latency-ms on several budgets: the ratio the search finds, and the latency of that architecture
timed again afterwards (5 fresh timings, median), against the budget and the noise the search measured.

    python benchmarks/latency_target.py --budgets 2.0 1.0 0.5 --runtime onnxruntime --threads 2

Latency does not depend on the weights, so a one-shot-pruned copy of the dense ResNet-18 has the final
model's architecture and speed. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from prunelab.config import make_config
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.prune import count_macs_params, prune_once
from prunelab.runtimes import latency
from prunelab.targets import ratio_for_latency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.0, 1.0, 0.5])
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/latency_target.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense = build_model("resnet18_cifar")
    rows = []
    for budget in args.budgets:
        cfg = make_config("seed", {"target_latency_ms": budget, "latency_runtime": args.runtime,
                                   "latency_batch_size": args.batch_size})
        found = ratio_for_latency(dense, cfg, 32, 10)
        m = prune_once(dense, cfg, found["ratio"], image_size=32, num_classes=10)
        with tempfile.TemporaryDirectory() as tmp:
            again = [latency(m.eval(), args.runtime, 32, args.batch_size, Path(tmp) / str(i), min_seconds=1.0)
                     for i in range(5)]
        achieved = statistics.median(again)
        row = {"budget_ms": budget, **found, "macs": count_macs_params(m, 32)[0], "achieved_again_ms": achieved,
               "achieved_again_runs": again, "within_noise": achieved <= budget * (1 + found["noise"])}
        rows.append(row)
        print(f"budget {budget:g} ms: ratio {found['ratio']:.4f}, {row['macs'] / 1e6:.1f} M MACs, search measured "
              f"{found['latency_ms']:.3f} ms, timed again {achieved:.3f} ms ({100 * (achieved / budget - 1):+.1f}% of the "
              f"budget; noise {100 * found['noise']:.1f}%) -> {'within' if row['within_noise'] else 'OUTSIDE'} the noise",
              flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"runtime": args.runtime, "batch_size": args.batch_size, "rows": rows,
                                           "machine": machine()}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
