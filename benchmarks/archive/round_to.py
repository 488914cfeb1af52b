"""Does rounding channel counts to a multiple of 8 or 16 make the pruned model faster per MAC?

    python benchmarks/archive/round_to.py --round-to 2 8 16 --ratio 0.9 --threads 2

The dense ResNet-18 (CIFAR stem) is pruned one-shot to the same channel ratio with each `--round-to`
(latency does not depend on the weights, so random weights do), and every model is timed side by side in
every installed runtime (eager PyTorch, batch norms folded, ONNX Runtime, OpenVINO) at batch 1 and N.
Prints a table (MACs, latency, MACs per microsecond, speed-up against the round_to=2 model) and writes JSON.
`--with-dense` times the dense model too (first, per runtime and batch) and adds each pruned model's speed-up
over it in the same runtime; `--runtimes` limits the runtimes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from prunelab.config import make_config
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.prune import count_macs_params, prune_once
from prunelab.runtimes import installed, prepare, time_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--round-to", type=int, nargs="+", default=[2, 8, 16])
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtimes", nargs="+", default=None, help="default: every installed one but torch-compile")
    ap.add_argument("--with-dense", action="store_true", help="time the dense model too; add 'vs dense'")
    ap.add_argument("--json", default="benchmarks/results/round_to.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = build_model("resnet18_cifar").eval()
    models = {}
    for r in args.round_to:
        cfg = dataclasses.replace(make_config("seed"), round_to=r)
        models[r] = prune_once(dense, cfg, args.ratio).eval()
    if args.with_dense:
        models = {"dense": dense, **models}  # (dict order: timed first)
    runtimes = args.runtimes or [rt for rt in installed() if rt != "torch-compile"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batch_sizes:
            x = np.random.default_rng(0).standard_normal((b, 3, 32, 32), dtype=np.float32)
            for rt in runtimes:
                for r, m in models.items():  # the round_to variants one after another, per runtime and batch
                    p = prepare(rt, m, 32, Path(tmp) / f"{rt}-{r}-{b}", batch_size=b, threads=args.threads)
                    t = time_run(p.run, x, min_seconds=2.0)
                    macs, params = count_macs_params(m, 32)
                    rows.append({"round_to": r, "runtime": rt, "batch_size": b, "macs": macs, "params": params, **t})
    def ms(r, row):
        return next(x["median_ms"] for x in rows if (x["round_to"], x["runtime"], x["batch_size"]) ==
                    (r, row["runtime"], row["batch_size"]))
    print("| runtime | batch | round_to | params | MACs | median (ms) | MACs/us | speed vs round_to "
          f"{args.round_to[0]} |" + (" vs dense |" if args.with_dense else "") + "\n| :--- | ---: | ---: | ---: | ---: | "
          "---: | ---: | ---: |" + (" ---: |" if args.with_dense else ""))
    for row in rows:
        per_us = row["macs"] * row["batch_size"] / (row["median_ms"] * 1000)
        print(f"| {row['runtime']} | {row['batch_size']} | {row['round_to']} | {row['params']:,} | {row['macs'] / 1e6:.2f} M "
              f"| {row['median_ms']:.3f} | {per_us:.0f} | {ms(args.round_to[0], row) / row['median_ms']:.2f}x |"
              + (f" {ms('dense', row) / row['median_ms']:.1f}x |" if args.with_dense else ""))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "ratio": args.ratio, "rows": rows, "machine": machine()}, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
