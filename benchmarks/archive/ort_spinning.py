"""Does an ONNX Runtime session sometimes run at half speed after PyTorch has run, and is thread spinning why?

    python benchmarks/archive/ort_spinning.py --threads 2 --rounds 6 --batch-sizes 1 128

On the project's 2-core machines the seed-size pruned ResNet-18 ran 42-46 ms at batch 128 in some ONNX Runtime
sessions and 20-22 ms in most (docs/RESULTS.md, round_to). This script repeats, per round and batch size: time the
model in eager PyTorch with batch norms folded (prunelab's `pytorch-fused` path, as benchmarks do before ORT),
then a fresh ORT session with the default intra-op thread spinning, then the same again with
`session.intra_op.allow_spinning` = 0. The model is a one-shot ratio-0.9 copy of the CIFAR ResNet-18 with random
weights (latency does not depend on them). Prints every round and a summary; writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from prunelab.config import make_config
from prunelab.export import export_onnx
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.prune import prune_once
from prunelab.runtimes import ort_session, prepare, time_run


def seed_point_model() -> torch.nn.Module:
    """The CIFAR ResNet-18 pruned one-shot to ratio 0.9 (105,428 params), random weights, eval mode."""
    torch.manual_seed(0)
    cfg = make_config("full", {"progress": False})
    return prune_once(build_model(cfg.model), cfg, 0.9).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128])
    ap.add_argument("--json", default="benchmarks/results/ort_spinning.json")
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
                for spin in (True, False):
                    torch_ms = time_run(fused.run, x, min_seconds=1.0)["median_ms"]
                    s = ort_session(onnx, args.threads, spinning=spin)
                    ort_ms = time_run(lambda a: s.run(None, {"images": a})[0], x, min_seconds=1.0)["median_ms"]
                    s = None  # the session and its threads go before the next round
                    rows.append({"batch_size": b, "round": i, "spinning": spin, "torch_fused_ms": torch_ms,
                                 "ort_ms": ort_ms})
                    print(f"batch {b} round {i} spinning {'on ' if spin else 'off'}: PyTorch (BN folded) "
                          f"{torch_ms:.3f} ms, then ORT {ort_ms:.3f} ms", flush=True)
    m = machine()
    print(f"\n{m['processor']}, {args.threads} threads, {args.rounds} rounds\n")
    print("| batch | ORT spinning | median of rounds (ms) | fastest | slowest | rounds over 1.5x the fastest |")
    print("| ---: | :--- | ---: | ---: | ---: | ---: |")
    summary = []
    for b in args.batch_sizes:
        for spin in (True, False):
            t = [r["ort_ms"] for r in rows if r["batch_size"] == b and r["spinning"] == spin]
            slow = sum(v > 1.5 * min(t) for v in t)
            summary.append({"batch_size": b, "spinning": spin, "median_ms": statistics.median(t), "min_ms": min(t),
                            "max_ms": max(t), "slow_rounds": slow})
            print(f"| {b} | {'on (default)' if spin else 'off'} | {statistics.median(t):.3f} | {min(t):.3f} | "
                  f"{max(t):.3f} | {slow} of {len(t)} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": m, "threads": args.threads, "rounds": rows, "summary": summary},
                              indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
