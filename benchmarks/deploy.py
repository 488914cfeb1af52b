"""Deployment table for one finished run: dense and pruned in every installed runtime at batch 1 and N,
plus pruned INT8 in every installed INT8 runtime (OpenVINO + NNCF, ONNX Runtime), side by side in one process. Prints Markdown and writes JSON.

    python benchmarks/deploy.py runs/quick --threads 2 [--compile] [--batch-sizes 1 128]

Every runtime's outputs are checked against eager PyTorch before it is timed (prunelab.runtimes.check).
Ratios are what to read: this project's machines are shared, absolute times move from run to run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from prunelab.bench import bench, bench_runtimes, bench_table, fastest, models_to_bench
from prunelab.errors import PrunelabError
from prunelab.quantize import quant_runtime, quantize_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128])
    ap.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compiling per setting)")
    ap.add_argument("--data-dir", default=None, help="the run's data, if it moved (for INT8 calibration and accuracy)")
    ap.add_argument("--json", default="benchmarks/results/deploy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runtimes = bench_runtimes(["all"] if args.compile else None)
    result = bench(models_to_bench([args.run_dir]), args.batch_sizes, [torch.device("cpu")], warmup=5,
                   min_reps=20, min_seconds=2.0, runtimes=runtimes)
    int8 = {}
    for runtime in ("onnxruntime", "openvino"):  # the last one's files and report section stay in the run
        try:
            quant_runtime(runtime)
        except PrunelabError as e:
            print(f"INT8 in {runtime}: skipped ({e})")
            continue
        int8[runtime] = quantize_run(args.run_dir, batch_sizes=args.batch_sizes, threads=args.threads,
                                     data_dir=args.data_dir, runtime=runtime)
    print(bench_table(result))
    print("\n| pruned | runtime | test accuracy | file (MB) | " + " | ".join(f"b{b} (ms)" for b in args.batch_sizes)
          + " | INT8 speed-up |")
    print("| :--- | :--- | ---: | ---: |" + " ---: |" * len(args.batch_sizes) + " :--- |")
    for runtime, q in int8.items():
        f32, i8 = q["models"]["fp32"], q["models"]["int8"]
        for name, m in (("FP32", f32), ("INT8", i8)):
            speed = ", ".join(f"b{a['batch_size']} {a['median_ms'] / b['median_ms']:.2f}x"
                              for a, b in zip(f32["latency"], i8["latency"])) if name == "INT8" else ""
            print(f"| {name} | {runtime} | {100 * m['accuracy']:.2f}% | {m['file_size_bytes'] / 1e6:.3f} | "
                  + " | ".join(f"{r['median_ms']:.3f}" for r in m["latency"]) + f" | {speed} |")
    out = {"bench": result, "fastest": fastest(result), "int8": int8}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
