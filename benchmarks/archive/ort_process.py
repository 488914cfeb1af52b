"""Is ONNX Runtime's occasional half-speed session at batch 128 caused by PyTorch running in the same process?

    python benchmarks/archive/ort_process.py --threads 2 --rounds 8 --batch-sizes 128 1

benchmarks/archive/ort_spinning.py found that a fresh ORT session (default thread spinning) now and then runs the
seed-size pruned ResNet-18 at half speed at batch 128 on the project's 2-core machines, when it is timed right
after eager PyTorch in the same process (as `prunelab bench` does). This script times, round after round and in a
rotating order, a fresh ORT session (prunelab's options, without saving the optimised model) in three places:

    after-pytorch   this process, right after timing eager PyTorch with batch norms folded (what bench does)
    idle-pytorch    this process, after 3 s in which PyTorch ran nothing
    fresh-process   a new Python process that imports only onnxruntime and numpy (a deployment's process)

The model is a one-shot ratio-0.9 copy of the CIFAR ResNet-18 with random weights. Every session uses the same
timing rule as prunelab (3 warm-up runs, then at least 10 runs and 1 s; the median). Prints every round and a
summary; writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ort_spinning import seed_point_model  # (benchmarks/ is on the path: this is run as a script)
from prunelab.export import export_onnx
from prunelab.measurement import machine
from prunelab.runtimes import ort_session, prepare, time_run

WORKER = """
import json, statistics, sys, time
import numpy as np
import onnxruntime as ort
path, b, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
o = ort.SessionOptions()
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32)
def once():
    t0 = time.perf_counter(); s.run(None, {"images": x}); return (time.perf_counter() - t0) * 1000
for _ in range(3):
    once()
times, start = [], time.perf_counter()
while (len(times) < 10 or time.perf_counter() - start < 1.0) and len(times) < 1000:
    times.append(once())
print(json.dumps({"median_ms": statistics.median(times), "torch_imported": "torch" in sys.modules}))
"""
PLACES = ("after-pytorch", "idle-pytorch", "fresh-process")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1])
    ap.add_argument("--json", default="benchmarks/results/ort_process.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = seed_point_model()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(model, onnx, input_size=32)
        fused = prepare("pytorch-fused", model, 32, tmp)
        for b in args.batch_sizes:
            x = np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32)
            for i in range(args.rounds):
                for k in range(len(PLACES)):
                    place = PLACES[(i + k) % len(PLACES)]  # rotate, so no place is always first after another
                    torch_ms = None
                    if place == "fresh-process":
                        out = subprocess.run([sys.executable, "-c", WORKER, str(onnx), str(b), str(args.threads)],
                                             capture_output=True, text=True, check=True).stdout
                        r = json.loads(out)
                        assert not r["torch_imported"]
                        ort_ms = r["median_ms"]
                    else:
                        if place == "after-pytorch":
                            torch_ms = time_run(fused.run, x, min_seconds=1.0)["median_ms"]
                        else:
                            time.sleep(3.0)
                        s = ort_session(onnx, args.threads)
                        ort_ms = time_run(lambda a: s.run(None, {"images": a})[0], x, min_seconds=1.0)["median_ms"]
                        s = None  # the session and its threads go before the next one
                    rows.append({"batch_size": b, "round": i, "place": place, "ort_ms": ort_ms,
                                 "torch_fused_ms": torch_ms})
                    print(f"batch {b} round {i} {place:14s} ORT {ort_ms:8.3f} ms", flush=True)
    m = machine()
    print(f"\n{m['processor']}, {args.threads} threads, {args.rounds} rounds\n")
    print("| batch | where the ORT session ran | median of rounds (ms) | fastest | slowest | rounds over 1.5x the "
          "fastest of the batch |")
    print("| ---: | :--- | ---: | ---: | ---: | ---: |")
    summary = []
    for b in args.batch_sizes:
        best = min(r["ort_ms"] for r in rows if r["batch_size"] == b)
        for place in PLACES:
            t = [r["ort_ms"] for r in rows if r["batch_size"] == b and r["place"] == place]
            slow = sum(v > 1.5 * best for v in t)
            summary.append({"batch_size": b, "place": place, "median_ms": statistics.median(t), "min_ms": min(t),
                            "max_ms": max(t), "slow_rounds": slow, "rounds": len(t)})
            print(f"| {b} | {place} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} | "
                  f"{slow} of {len(t)} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": m, "threads": args.threads, "rounds": rows, "summary": summary},
                              indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
