"""--target-latency-ms on several budgets: the ratio the search finds, and the latency of that architecture
timed again afterwards (5 fresh timings, median), against the budget and the noise the search measured.
--speedups does the same for --target-speedup (against the dense model, timed in the same search); --load runs
everything once per number of busy processes beside it (0 = quiet), to see which target moves with the load.

    python benchmarks/latency_target.py --budgets 2.0 1.0 0.5 --runtime onnxruntime --threads 2
    python benchmarks/latency_target.py --budgets 0.35 --speedups 15 --round-to 8 --load 0 1 0 1   # RESULTS 7.12
    python benchmarks/latency_target.py --budgets 0.35 --round-to 2 8 --drop-blocks layer1.1 layer2.1 layer3.1 layer4.1
    python benchmarks/latency_target.py --curve 0.6 0.7 0.75 0.8 0.85 --round-to 2 8 --repeats 3   # no search

--curve times one-shot-pruned copies at the given ratios (each `--repeats` fresh sessions): how latency moves with
the width, which the search assumes nothing about (latency is not monotone in the ratio: RESULTS 7.10).

Latency does not depend on the weights, so a one-shot-pruned copy of the dense ResNet-18 has the final
model's architecture and speed. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import tempfile
from pathlib import Path

import torch

from prunelab.config import make_config
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.models import build_model, drop_blocks
from prunelab.prune import count_macs_params, prune_once
from prunelab.runtimes import latency
from prunelab.targets import ratio_for_latency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="*", default=[2.0, 1.0, 0.5], help="--target-latency-ms values")
    ap.add_argument("--speedups", type=float, nargs="*", default=[], help="--target-speedup values")
    ap.add_argument("--load", type=int, nargs="+", default=[0], metavar="N",
                    help="run everything once per value, with N busy processes beside it")
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-to", type=int, nargs="+", default=[2], help="one series per value")
    ap.add_argument("--drop-blocks", nargs="+", default=[], metavar="NAME", help="blocks removed before the cut")
    ap.add_argument("--curve", type=float, nargs="+", metavar="RATIO", help="time these ratios; no search")
    ap.add_argument("--repeats", type=int, default=3, help="fresh sessions per ratio of --curve")
    ap.add_argument("--json", default="benchmarks/results/latency_target.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    full = build_model("resnet18_cifar")  # a speed-up is against it, as a run's is
    dense = drop_blocks(copy.deepcopy(full), args.drop_blocks) if args.drop_blocks else full
    rows = []
    targets = [("target_latency_ms", b) for b in args.budgets] + [("target_speedup", s) for s in args.speedups]
    for load in ([] if args.curve else args.load):
        busy = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(load)]
        for b in busy:
            b.start()
        try:
            for round_to in args.round_to:
                for kind, value in targets:
                    rows.append(_search(dense, full, kind, value, round_to, args))
                    rows[-1]["load"] = load
                    print(f"  (load: {load} busy process{'es' if load != 1 else ''})", flush=True)
        finally:
            for b in busy:
                b.terminate()
    for round_to in args.round_to:
        for ratio in args.curve or []:
            cfg = make_config("seed", {"round_to": round_to})
            m = prune_once(dense, cfg, ratio, image_size=32, num_classes=10).eval()
            with tempfile.TemporaryDirectory() as tmp:
                runs = [latency(m, args.runtime, 32, args.batch_size, Path(tmp) / str(i))
                        for i in range(args.repeats)]
            macs, params = count_macs_params(m, 32)
            rows.append({"round_to": round_to, "ratio": ratio, "macs": macs, "params": params,
                         "median_ms": statistics.median(runs), "runs_ms": runs})
            print(f"round_to {round_to}, ratio {ratio:.3f}: {macs / 1e6:6.2f} M MACs {params / 1e3:5.0f} k params  "
                  f"median {statistics.median(runs):.3f} ms  (" + " ".join(f"{t:.3f}" for t in runs) + ")", flush=True)
    write_json(args.json, {"runtime": args.runtime, "batch_size": args.batch_size, "drop_blocks": args.drop_blocks,
                           "rows": rows, "machine": machine()})
    print(f"wrote {args.json}")


def _spin() -> None:
    """A busy process: the load of another job on the same cores."""
    while True:
        pass


def _search(dense, full, kind: str, value: float, round_to: int, args) -> dict:
    """One latency search for target `kind` = `value`, and its answer timed again (5 fresh sessions, median)."""
    cfg = make_config("seed", {kind: value, "latency_runtime": args.runtime, "latency_batch_size": args.batch_size,
                               "round_to": round_to, "drop_blocks": args.drop_blocks})
    found = ratio_for_latency(dense, cfg, 32, 10, reference=full if args.drop_blocks else None)
    m = prune_once(dense, cfg, found["ratio"], image_size=32, num_classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        again = [latency(m.eval(), args.runtime, 32, args.batch_size, Path(tmp) / str(i), min_seconds=1.0)
                 for i in range(5)]
    achieved = statistics.median(again)
    macs, params = count_macs_params(m, 32)
    budget = found["target_ms"]
    row = {"round_to": round_to, "kind": kind, "value": value, "budget_ms": budget, **found, "macs": macs,
           "params": params, "achieved_again_ms": achieved, "achieved_again_runs": again,
           "within_noise": achieved <= budget * (1 + found["noise"])}
    what = f"{value:g} ms" if kind == "target_latency_ms" else f"{value:g}x (= {budget:.3f} ms)"
    print(f"round_to {round_to}, target {what}: ratio {found['ratio']:.4f}, {macs / 1e6:.1f} M MACs, "
          f"{params / 1e3:.0f} k params, {found['timings']} timings; dense {found['dense_latency_ms']:.3f} ms, search "
          f"measured {found['latency_ms']:.3f} ms, timed again {achieved:.3f} ms ({100 * (achieved / budget - 1):+.1f}% "
          f"of the budget; noise {100 * found['noise']:.1f}%) -> {'within' if row['within_noise'] else 'OUTSIDE'} "
          "the noise", flush=True)
    return row


if __name__ == "__main__":
    main()
