"""Measurement: params and MACs, latency (warm-up, then median and p90 of timed runs), file size, the machine, and
the one rule for how far another execution path's outputs may differ from eager PyTorch's (ATOL, RTOL).
Comparing runtimes side by side is bench.py's job."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from .errors import PrunelabError
from .prune import count_macs_params

# fp32 logits of another path (ONNX Runtime, OpenVINO, batch norms folded, a CUDA graph) may differ from eager
# PyTorch's by ATOL + RTOL x the largest logit: folding batch norms and other kernels reorder the sums, and the
# rounding grows with the logits' magnitude. Every check (export, runtimes, CUDA graphs) uses this rule.
ATOL, RTOL = 1e-4, 1e-4


def tolerance(largest_logit: float) -> float:
    """How far another path's logits may be from eager PyTorch's, given the largest |logit| of the reference."""
    return ATOL + RTOL * largest_logit


def time_runs(run_once, *, warmup: int, min_reps: int, min_seconds: float) -> dict:
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


# Other processes keeping this many CPU cores busy on average while latency is timed: the timings are suspect.
BUSY_CORES = 0.25


def load_mark() -> tuple[float, float, float] | None:
    """Now, for `other_cores`: (wall seconds, busy CPU seconds of the whole machine, CPU seconds of this process and
    its finished children). Linux only (/proc/stat's first line); None elsewhere."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle and iowait; the eight fields end before guest time (counted in user already)
    own = os.times()
    return (time.monotonic(), (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"),
            own.user + own.system + own.children_user + own.children_system)


def other_cores(mark: tuple[float, float, float] | None) -> float | None:
    """How many CPU cores other processes kept busy, on average, since `mark` (load_mark()): the machine's busy
    time less this process's, over the wall time. Timings taken meanwhile hold for a machine that busy, not a quiet
    one: a dense ResNet-18 slowed 2-3.6x beside one busy process, a small pruned model far less (RESULTS 7.12).
    None where it cannot be measured (not Linux, or under 0.1 s)."""
    now = load_mark()
    if mark is None or now is None or now[0] - mark[0] < 0.1:
        return None
    return max(0.0, ((now[1] - mark[1]) - (now[2] - mark[2])) / (now[0] - mark[0]))


def busy_warning(cores: float | None, when: str) -> str | None:
    """The one warning for latencies timed while other processes kept `cores` CPU cores busy (`other_cores`), from
    BUSY_CORES up; None below it or when unmeasured."""
    if cores is None or cores < BUSY_CORES:
        return None
    return (f"other processes kept {cores:.1f} CPU cores busy while {when}: under load a large model slows more than "
            "a small one, so these latencies and speed-ups are not a quiet machine's (RESULTS 7.12)")


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

    return time_runs(run_once, warmup=warmup, min_reps=min_reps, min_seconds=min_seconds)


def cuda_graph_latency_ms(model: nn.Module, batch_size: int, device: torch.device, *, warmup: int = 3,
                          min_reps: int = 5, min_seconds: float = 1.0, input_size: int = 32) -> dict:
    """Latency of the forward pass captured once in a CUDA graph and replayed: no per-kernel launch from Python,
    which is what a small model at batch 1 on a GPU is bound by. The replayed logits are checked against eager
    PyTorch's first (tolerance()); a model that cannot be captured or that differs raises PrunelabError."""
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
    if err > tolerance(reference.abs().max().item()):
        raise PrunelabError(f"CUDA graph replay differs from eager PyTorch by {err:.2e}; not timed")
    return time_runs(lambda: _cuda_ms(graph.replay, device), warmup=warmup, min_reps=min_reps,
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


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "processor": _cpu_name(), "cpu_bf16": cpu_has_bf16(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
