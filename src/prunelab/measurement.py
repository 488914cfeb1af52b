"""Measurement: params and MACs, latency (warm-up, then median and p90 of timed runs), file size."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .prune import count_macs_params


def _time_runs(run_once, *, warmup: int, min_reps: int, min_seconds: float) -> dict:
    """Call run_once() `warmup` times untimed, then until at least `min_reps` runs and `min_seconds` have
    passed (at most 1000 runs); run_once returns its own duration in ms. Median and p90 of those."""
    for _ in range(warmup):
        run_once()
    times = []
    start_all = time.perf_counter()
    while (len(times) < min_reps or time.perf_counter() - start_all < min_seconds) and len(times) < 1000:
        times.append(run_once())
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "reps": len(times)}


def _cuda_ms(fn, device: torch.device) -> float:
    """ms of fn() on the GPU, by CUDA events after synchronising, so queued work is not missed."""
    torch.cuda.synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    return begin.elapsed_time(end)


@torch.inference_mode()
def latency_ms(model: nn.Module, batch_size: int, device: torch.device, *, warmup: int = 3, min_reps: int = 5,
               min_seconds: float = 1.0, channels_last: bool = True, input_size: int = 32) -> dict:
    """Forward-pass latency in fp32, eval mode. Times at least `min_reps` runs and at least `min_seconds`.
    On CUDA each run is timed with CUDA events after synchronising, so queued work is not missed."""
    model.eval()
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run_once() -> float:
        if device.type == "cuda":
            return _cuda_ms(lambda: model(x), device)
        t0 = time.perf_counter()
        model(x)
        return (time.perf_counter() - t0) * 1000

    return _time_runs(run_once, warmup=warmup, min_reps=min_reps, min_seconds=min_seconds)


def cuda_graph_latency_ms(model: nn.Module, batch_size: int, device: torch.device, *, warmup: int = 3,
                          min_reps: int = 5, min_seconds: float = 1.0, input_size: int = 32) -> dict:
    """Latency of the forward pass captured once in a CUDA graph and replayed: no per-kernel launch from Python,
    which is what a small model at batch 1 on a GPU is bound by. The replayed logits are checked against eager
    PyTorch's first (runtimes.ATOL/RTOL); a model that cannot be captured or that differs raises PrunelabError."""
    from .config import PrunelabError
    from .runtimes import ATOL, RTOL
    model.eval()
    static_x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    with torch.no_grad():
        reference = model(static_x).float()
        side = torch.cuda.Stream(device)  # warm-up on a side stream before capture, as torch.cuda.graphs asks
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                model(static_x)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_y = model(static_x)
        except RuntimeError as e:
            raise PrunelabError(f"cannot capture this model in a CUDA graph: {str(e).splitlines()[0]}") from e
        graph.replay()
        torch.cuda.synchronize(device)
        err = (static_y.float() - reference).abs().max().item()
    if err > ATOL + RTOL * reference.abs().max().item():
        raise PrunelabError(f"CUDA graph replay differs from eager PyTorch by {err:.2e}; not timed")
    return _time_runs(lambda: _cuda_ms(graph.replay, device), warmup=warmup, min_reps=min_reps,
                      min_seconds=min_seconds)


def measure_model(model: nn.Module, *, batch_sizes, devices, warmup: int, min_reps: int, min_seconds: float,
                  channels_last: bool = True, input_size: int = 32) -> dict:
    """Params, MACs and latency of `model` at each batch size on each device:
    {"params", "macs", "latency": [{"runtime": "pytorch", "device", "batch_size", "median_ms", "p90_ms", "reps"}]}.
    The model is returned to its device and mode."""
    was_training = model.training
    home = next(model.parameters()).device
    macs, params = count_macs_params(model, input_size)
    out = {"params": params, "macs": macs, "latency": []}
    for device in devices:
        model.to(device)
        for b in batch_sizes:
            r = latency_ms(model, b, device, warmup=warmup, min_reps=min_reps, min_seconds=min_seconds,
                           channels_last=channels_last, input_size=input_size)
            out["latency"].append({"runtime": "pytorch", "device": device.type, "batch_size": b, **r})
    model.to(home).train(was_training)
    return out


def latency_records(row: dict) -> list[dict]:
    """The latency records of a metrics or results row, sorted by runtime, device and batch size. Reads the
    flat keys of run directories written before prunelab 0.2 (`latency_ms_cpu_b1`, `latency_p90_ms_cpu_b1`)."""
    records = list(row.get("latency") or [])
    for key, value in row.items():
        if key.startswith("latency_ms_"):
            setting = key[len("latency_ms_"):]
            where, batch = setting.rsplit("_b", 1)
            runtime, device = ("onnxruntime", "cpu") if where == "onnxrt" else ("pytorch", where)
            records.append({"runtime": runtime, "device": device, "batch_size": int(batch), "median_ms": value,
                            "p90_ms": row.get(f"latency_p90_ms_{setting}")})
    return sorted(records, key=lambda r: (r["runtime"] != "pytorch", r["runtime"], r["device"], r["batch_size"]))


def latency_label(record: dict) -> str:
    runtime = "" if record["runtime"] == "pytorch" else {"onnxruntime": "ONNX Runtime "}.get(record["runtime"],
                                                                                              record["runtime"] + " ")
    return f"{runtime}{record['device'].upper()} batch {record['batch_size']}"


def find_latency(row: dict, device: str, batch_size: int, runtime: str = "pytorch") -> float | None:
    """The median latency (ms) of one setting in a row, or None if it was not measured."""
    for r in latency_records(row):
        if (r["runtime"], r["device"], r["batch_size"]) == (runtime, device, batch_size):
            return r["median_ms"]
    return None


def latency_devices(train_device: torch.device) -> list[torch.device]:
    """CPU latency always (the deployment target of most small CNNs); GPU latency too when training on one."""
    return [torch.device("cpu")] + ([train_device] if train_device.type == "cuda" else [])


def file_size_bytes(path: str | Path) -> int:
    return Path(path).stat().st_size


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on."""
    from .train import cpu_has_bf16
    info = {"platform": platform.platform(), "processor": _cpu_name(), "cpu_bf16": cpu_has_bf16(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


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
    PyTorch at that batch size."""
    import tempfile

    from .config import PrunelabError
    from .runtimes import check, prepare, time_sessions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, weights, *rest in models:  # (label, model, weights file or None[, input size in px])
            size = rest[0] if rest else 32
            model = model.float().eval()
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
            "min_reps": min_reps, "min_seconds": min_seconds, "machine": machine()}


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
                 "eager PyTorch within 1e-4 + 1e-4 x the largest logit before it was timed.")
    lines.append("")
    for f in fastest(result):
        lines.append(f"- fastest for {f['model']}, {f['device'].upper()} batch {f['batch_size']}: "
                     f"{names.get(f['runtime'], f['runtime'])} {f['median_ms']:.3f} ms"
                     + (f" ({f['speedup_vs_first_eager']:.1f}x the first model in eager PyTorch)"
                        if f.get("speedup_vs_first_eager") else ""))
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
