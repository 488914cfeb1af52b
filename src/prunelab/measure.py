"""Measurement: params and MACs, latency (warm-up, then median and p90 of timed runs), file size."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from .prune import count_macs_params


@torch.inference_mode()
def latency_ms(model: nn.Module, batch_size: int, device: torch.device, *, warmup: int = 3, min_reps: int = 5,
               min_seconds: float = 1.0, channels_last: bool = True, input_size: int = 32) -> dict:
    """Forward-pass latency in fp32, eval mode. Times at least `min_reps` runs and at least `min_seconds`.
    On CUDA each run is timed with CUDA events after synchronising, so queued work is not missed."""
    model.eval()
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        model(x)
    cuda = device.type == "cuda"
    times = []
    start_all = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start_all < min_seconds:
        if cuda:
            torch.cuda.synchronize(device)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            model(x)
            end.record()
            torch.cuda.synchronize(device)
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1000)
        if len(times) >= 1000:
            break
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "reps": len(times)}


def measure_model(model: nn.Module, *, batch_sizes, devices, warmup: int, min_reps: int, min_seconds: float,
                  channels_last: bool = True) -> dict:
    """Params, MACs and latency of `model` at each batch size on each device, as flat keys such as
    `latency_ms_cpu_b1` (median) and `latency_p90_ms_cpu_b1`. The model is returned to its device and mode."""
    was_training = model.training
    home = next(model.parameters()).device
    macs, params = count_macs_params(model)
    out = {"params": params, "macs": macs}
    for device in devices:
        model.to(device)
        for b in batch_sizes:
            r = latency_ms(model, b, device, warmup=warmup, min_reps=min_reps, min_seconds=min_seconds,
                           channels_last=channels_last)
            out[f"latency_ms_{device.type}_b{b}"] = r["median_ms"]
            out[f"latency_p90_ms_{device.type}_b{b}"] = r["p90_ms"]
    model.to(home).train(was_training)
    return out


def latency_devices(train_device: torch.device) -> list[torch.device]:
    """CPU latency always (the deployment target of most small CNNs); GPU latency too when training on one."""
    return [torch.device("cpu")] + ([train_device] if train_device.type == "cuda" else [])


def file_size_bytes(path: str | Path) -> int:
    return Path(path).stat().st_size


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
