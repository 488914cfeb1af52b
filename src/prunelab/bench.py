"""Models side by side: params, MACs, file size and latency in every runtime (runtimes.py), each path checked
against eager PyTorch before it is timed. What `prunelab bench` and benchmarks/deploy.py print."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import PrunelabError
from .measurement import (ATOL, RTOL, busy_warning, cuda_graph_latency_ms, file_size_bytes, find_latency, latency_ms,
                          load_mark, machine, other_cores)
from .modelfile import load
from .prune import count_macs_params
from .rundir import model_file
from .runtimes import check, installed, missing, prepare, time_sessions


def bench_runtimes(names: list[str] | None = None, onnx_only: bool = False) -> list[str]:
    """The runtimes a bench compares: `names` as given (each must be installed; ["all"]: every installed one), or
    by default every installed one but torch-compile, whose compiling takes minutes on a small CPU (`onnx_only`:
    pytorch and onnxruntime, the choice of earlier versions)."""
    if names is None:
        return ["pytorch", "onnxruntime"] if onnx_only else [r for r in installed() if r != "torch-compile"]
    if list(names) == ["all"]:
        return installed()
    for r in names:  # unknown or not installed: one line, before any model is loaded
        reason = missing(r)
        if reason:
            raise PrunelabError(reason)
    return list(names)


def models_to_bench(paths, trust_pickle: bool = False, trust_code: bool = False) -> list[tuple]:
    """(label, model, weights file, input size) for each path: a run directory stands for its dense and final
    models, a model file for itself (labelled by its name, or by the path as given when two files share a name)."""
    stems = [Path(p).stem for p in paths if not Path(p).is_dir()]
    out = []
    for p in paths:
        targets = [("dense", model_file(p, "dense")), ("final", model_file(p, "final"))] \
            if Path(p).is_dir() else [(Path(p).stem, Path(p))]
        for which, path in targets:
            model, desc = load(path, trust_pickle=trust_pickle, trust_code=trust_code)
            label = f"{Path(p).name}:{which}" if Path(p).is_dir() else which if stems.count(which) == 1 else str(p)
            weights = path.with_name(desc["weights_file"]) if desc.get("weights_file") else path
            size = (desc.get("inputs") or {}).get("image_size", 32)
            out.append((label, model, weights, size))
    return out


# Fresh sessions of one runtime (runtimes.FRESH_SESSIONS) whose medians differ by more than this are named under
# the bench table.
SESSION_SPREAD = 1.5


def bench(models: list[tuple], batch_sizes, devices, *, warmup: int = 3, min_reps: int = 10,
          min_seconds: float = 2.0, runtimes=("pytorch",), workdir: Path | None = None,
          channels_last: bool = False) -> dict:
    """Measure several models side by side in this process: params, MACs, file size, and latency in each
    runtime (runtimes.py) on the CPU at each batch size (on CUDA too, when a CUDA device is in `devices`: PyTorch
    eager, and the same forward pass replayed from a CUDA graph). Every runtime's outputs are checked against
    eager PyTorch before it is timed; a path that fails is listed in "skipped" with the reason. ONNX Runtime is
    timed in fresh sessions and the fastest is kept (runtimes.time_sessions; every median is in the record).
    Each record gets its speed-up over the first model in the same setting, and over the first model in eager
    PyTorch at that batch size. The models are measured as fp32 eval-mode copies: the caller's are not changed."""
    rows, mark = [], load_mark()
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, weights, *rest in models:  # (label, model, weights file or None[, input size in px])
            size = rest[0] if rest else 32
            model = copy.deepcopy(model).float().eval()
            macs, params = count_macs_params(model, size)
            row = {"model": label, "input_size": size, "params": params, "macs": macs, "latency": [], "skipped": []}
            if weights is not None:
                row["file_size_bytes"] = file_size_bytes(weights)
            for device in [d for d in devices if d.type == "cuda"]:
                model.to(device)
                for b in batch_sizes:
                    r = latency_ms(model, b, device, warmup=warmup, min_reps=min_reps, min_seconds=min_seconds,
                                   channels_last=channels_last, input_size=size)
                    row["latency"].append({"runtime": "pytorch", "device": "cuda", "batch_size": b, **r})
                    try:  # the same forward pass replayed from a CUDA graph
                        r = cuda_graph_latency_ms(model, b, device, warmup=warmup, min_reps=min_reps,
                                                  min_seconds=min_seconds, input_size=size)
                    except PrunelabError as e:
                        row["skipped"].append({"runtime": "pytorch-cudagraph", "batch_size": b, "reason": str(e)})
                        continue
                    row["latency"].append({"runtime": "pytorch-cudagraph", "device": "cuda", "batch_size": b, **r})
                model.cpu()
            work = Path(workdir or tmp) / f"model{len(rows)}"
            work.mkdir(parents=True, exist_ok=True)
            for runtime in runtimes:
                for b in batch_sizes:
                    x = np.random.default_rng(0).standard_normal((b, 3, size, size), dtype=np.float32)
                    notes = []

                    def fresh():  # a new session of this runtime, checked against PyTorch first
                        path = prepare(runtime, model, size, work, batch_size=b)
                        check(path, model, size, b)
                        notes.append(path.note)
                        if runtime == "pytorch" and channels_last:
                            cl = model.to(memory_format=torch.channels_last)
                            xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
                            return lambda _x: cl(xt)
                        return path.run
                    try:
                        r = time_sessions(runtime, fresh, x, warmup=warmup, min_reps=min_reps, min_seconds=min_seconds)
                    except PrunelabError as e:
                        row["skipped"].append({"runtime": runtime, "batch_size": b, "reason": str(e)})
                        continue
                    row["latency"].append({"runtime": runtime, "device": "cpu", "batch_size": b, **r,
                                           **({"note": notes[-1]} if notes[-1] else {})})
            rows.append(row)
    for row in rows:
        for r in row["latency"]:
            ref = find_latency(rows[0], r["device"], r["batch_size"], r["runtime"])
            eager = find_latency(rows[0], r["device"], r["batch_size"], "pytorch")
            r["speedup"] = ref / r["median_ms"] if ref else None
            r["speedup_vs_first_eager"] = eager / r["median_ms"] if eager else None
        row["macs_ratio"] = rows[0]["macs"] / row["macs"]
    return {"models": rows, "batch_sizes": list(batch_sizes), "runtimes": list(runtimes), "warmup": warmup,
            "min_reps": min_reps, "min_seconds": min_seconds, "machine": machine(), "other_cores": other_cores(mark)}


def fastest(result: dict) -> list[dict]:
    """Per model and (device, batch size): the runtime with the lowest median."""
    out = []
    for row in result["models"]:
        for device, b in sorted({(r["device"], r["batch_size"]) for r in row["latency"]}):
            best = min((r for r in row["latency"] if (r["device"], r["batch_size"]) == (device, b)),
                       key=lambda r: r["median_ms"])
            out.append({"model": row["model"], "device": device, "batch_size": b, "runtime": best["runtime"],
                        "median_ms": best["median_ms"], "speedup_vs_first_eager": best["speedup_vs_first_eager"]})
    return out


def bench_table(result: dict) -> str:
    """The bench result as Markdown: one row per model and latency setting, then the fastest path for each."""
    lines = ["| model | params | MACs | file (MB) | runtime | batch | median (ms) | p90 (ms) | speed-up | vs first, eager "
             "| MACs ratio |", "| :--- | ---: | ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    names = {"pytorch": "PyTorch", "pytorch-cudagraph": "PyTorch, CUDA graph", "pytorch-fused": "PyTorch, BN folded",
             "torch-compile": "torch.compile", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}

    def x(v):
        return f"{v:.1f}x" if v else ""

    for row in result["models"]:
        size = f"{row['file_size_bytes'] / 1e6:.3f}" if "file_size_bytes" in row else ""
        for r in sorted(row["latency"], key=lambda r: (r["device"], r["batch_size"], r["median_ms"])):
            lines.append(f"| {row['model']} | {row['params'] / 1e6:.3f} M | {row['macs'] / 1e6:.1f} M | {size} | "
                         f"{names.get(r['runtime'], r['runtime'])} {r['device'].upper()} | {r['batch_size']} | "
                         f"{r['median_ms']:.3f} | {r['p90_ms']:.3f} | {x(r.get('speedup'))} | "
                         f"{x(r.get('speedup_vs_first_eager'))} | {row['macs_ratio']:.1f}x |")
    m = result["machine"]
    lines.append(f"\n{m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}"
                 + (f", {m['gpu']}" if m.get("gpu") else "") + f"; warm-up {result['warmup']}, at least "
                 f"{result['min_reps']} runs and {result['min_seconds']} s per setting; every path's outputs matched "
                 f"eager PyTorch within {ATOL:g} + {RTOL:g} x the largest logit before it was timed.")
    lines.append("")
    for f in fastest(result):
        lines.append(f"- fastest for {f['model']}, {f['device'].upper()} batch {f['batch_size']}: "
                     f"{names.get(f['runtime'], f['runtime'])} {f['median_ms']:.3f} ms"
                     + (f" ({f['speedup_vs_first_eager']:.1f}x the first model in eager PyTorch)"
                        if f.get("speedup_vs_first_eager") else ""))
    busy = busy_warning(result.get("other_cores"), "this ran")
    if busy:
        lines.append(f"- warning: {busy}")
    for row in result["models"]:
        for r in row["latency"]:
            t = r.get("session_medians_ms") or []
            if t and max(t) > SESSION_SPREAD * min(t):
                lines.append(f"- {row['model']}: {names.get(r['runtime'], r['runtime'])} at batch {r['batch_size']} "
                             f"ran {' and '.join(f'{v:.3f}' for v in t)} ms in {len(t)} fresh sessions; the table "
                             "has the fastest (a session of this runtime sometimes runs at a fraction of its speed)")
        for s in row.get("skipped", []):
            lines.append(f"- {row['model']}: {s['runtime']} at batch {s['batch_size']} skipped: {s['reason']}")
    return "\n".join(lines)
