"""Does splitting a batch across the cores (one single-threaded stream per core) beat one multi-threaded call?

    python benchmarks/archive/batch_split.py --threads 2 --batch-size 128 --ratio 0.9

The pruned model's batch-128 speed-up over the dense one stays near 47x in every runtime (docs/RESULTS.md,
deployment): its 6-52-channel convolutions keep the cores less busy than the dense model's. This script times,
side by side in one process, the dense ResNet-18 (CIFAR stem) and a one-shot pruned copy at `--ratio`
(latency does not depend on the weights, so random ones do) in four ways:

    openvino one request     LATENCY hint, all threads on one request of the whole batch (what prunelab times)
    openvino streams         THROUGHPUT hint, one stream per thread, the batch split into equal parts
    onnxruntime one session  all threads on one session run of the whole batch (what prunelab times)
    onnxruntime sessions     one single-threaded session per thread, the batch split, run from Python threads

Every path's logits are checked against eager PyTorch first. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from prunelab.config import make_config
from prunelab.export import export_onnx
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.prune import count_macs_params, prune_once
from prunelab.measurement import tolerance
from prunelab.runtimes import installed, ort_session, time_run


ONE_CALL = ("onnxruntime one session", "openvino one request")  # each runtime's path that prunelab times


def paths(onnx: Path, threads: int, batch: int) -> dict:
    out = {}
    if "onnxruntime" in installed():
        one = ort_session(onnx, threads)
        out["onnxruntime one session"] = lambda x: one.run(None, {"images": x})[0]
        sessions, pool = [ort_session(onnx, 1) for _ in range(threads)], ThreadPoolExecutor(threads)

        def split_ort(x):
            parts = zip(sessions, np.array_split(x, threads))
            return np.concatenate(list(pool.map(lambda sp: sp[0].run(None, {"images": sp[1]})[0], parts)))
        out["onnxruntime sessions"] = split_ort
    if "openvino" in installed():
        import openvino as ov
        core = ov.Core()

        def compiled(b: int, hint: dict):
            m = core.read_model(str(onnx))
            shape = m.inputs[0].get_partial_shape()
            shape[0] = b
            m.reshape({m.inputs[0].get_any_name(): shape})
            return core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                                                 **hint})
        c1 = compiled(batch, {"PERFORMANCE_HINT": "LATENCY"})
        request = c1.create_infer_request()
        out["openvino one request"] = lambda x: request.infer({0: x})[c1.output(0)].copy()
        c2 = compiled(batch // threads, {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads})
        queue, results = ov.AsyncInferQueue(c2, threads), [None] * threads
        queue.set_callback(lambda req, i: results.__setitem__(i, req.get_output_tensor(0).data.copy()))

        def split_ov(x):
            for i, part in enumerate(np.split(x, threads)):
                queue.start_async({0: part}, i)
            queue.wait_all()
            return np.concatenate(results)
        out["openvino streams"] = split_ov
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--json", default="benchmarks/results/batch_split.json")
    args = ap.parse_args()
    if args.batch_size % args.threads:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of --threads {args.threads}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = make_config("full", {"progress": False})
    dense = build_model(cfg.model).eval()
    pruned = prune_once(dense, cfg, args.ratio).eval()
    x = np.random.default_rng(0).standard_normal((args.batch_size, 3, 32, 32)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("dense", dense), ("pruned", pruned)):
            onnx = Path(tmp) / f"{name}.onnx"
            export_onnx(model, onnx, input_size=32)
            with torch.inference_mode():
                ref = model(torch.from_numpy(x)).numpy()
            macs, params = count_macs_params(model)
            for path, run in paths(onnx, args.threads, args.batch_size).items():
                err = float(np.abs(run(x) - ref).max())
                if err > tolerance(float(np.abs(ref).max())):
                    raise SystemExit(f"{name} {path}: logits differ from eager PyTorch by {err:.2e}")
                t = time_run(run, x, warmup=3, min_reps=10 if name == "dense" else 30, min_seconds=2.0)
                rows.append({"model": name, "params": params, "macs": macs, "path": path, "max_abs_error": err, **t})
                print(f"{name} {path}: {t['median_ms']:.2f} ms", flush=True)
    ms = {(r["model"], r["path"]): r["median_ms"] for r in rows}
    m = machine()
    print(f"\n{m['processor']}, {args.threads} threads, batch {args.batch_size}, ratio {args.ratio}\n")
    print("| path | dense (ms) | pruned (ms) | pruned vs dense | pruned vs the runtime's one-call path |")
    print("| :--- | ---: | ---: | ---: | ---: |")
    for path in dict.fromkeys(r["path"] for r in rows):
        base = ms[("pruned", next(p for p in ONE_CALL if path.startswith(p.split()[0])))]
        d, p = ms[("dense", path)], ms[("pruned", path)]
        print(f"| {path} | {d:.1f} | {p:.2f} | {d / p:.1f}x | {base / p:.2f}x |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": m, "threads": args.threads, "batch_size": args.batch_size,
                               "ratio": args.ratio, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
