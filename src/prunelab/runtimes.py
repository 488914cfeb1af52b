"""Inference runtimes for a trained model, each checked against PyTorch before it is timed.

    pytorch          eager PyTorch, fp32, eval mode (the reference every other path is checked against)
    pytorch-fused    eager, with every batch norm folded into the convolution before it (torch.fx fuse)
    torch-compile    torch.compile of the fused model (inductor; the mode that measures faster)
    onnxruntime      ONNX Runtime CPU, all graph optimisations, the optimised model saved beside the ONNX file
    openvino         OpenVINO CPU (optional extra: pip install 'prunelab[openvino]'), compiled from the ONNX
                     file for each batch size with the LATENCY hint and fp32 inference precision

`prepare(name, model, ...)` returns a Prepared path whose `run(x)` maps a float32 NCHW numpy batch to logits;
`check()` compares it with eager PyTorch within atol + rtol x the largest logit, and a path that fails the
check is reported, never timed.
"""
from __future__ import annotations

import copy
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .errors import PrunelabError
from .export import export_onnx
from .files import write_atomic
from .measurement import time_runs, tolerance

RUNTIMES = ("pytorch", "pytorch-fused", "torch-compile", "onnxruntime", "openvino")
INSTALL = {"onnxruntime": "pip install 'prunelab[onnx]'", "openvino": "pip install 'prunelab[openvino]'"}


def missing(name: str) -> str:
    """'' when runtime `name` can run here, else what to install."""
    if name not in RUNTIMES:
        raise PrunelabError(f"unknown runtime '{name}'; choose from: {', '.join(RUNTIMES)}")
    modules = {"onnxruntime": ["onnx", "onnxruntime"], "openvino": ["onnx", "openvino"]}.get(name, [])
    if any(importlib.util.find_spec(m) is None for m in modules):
        return f"runtime '{name}' is not installed: {INSTALL[name]}"
    return ""


def installed() -> list[str]:
    return [r for r in RUNTIMES if not missing(r)]


@dataclass
class Prepared:
    runtime: str
    run: Callable[[np.ndarray], np.ndarray]
    files: list = field(default_factory=list)  # what this path deploys (ONNX, optimised model, ...)
    note: str = ""


def ort_session(path: str | Path, threads: int | None = None, save_optimized: str | Path | None = None,
                spinning: bool = True):
    """An ONNX Runtime CPU session with all graph optimisations (optionally saving the optimised model);
    spinning False turns off the idle spinning of its intra-op threads (ORT's default is on)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if save_optimized:
        opts.optimized_model_filepath = str(save_optimized)
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads or torch.get_num_threads(), 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # the optimised file is for this machine: said in the docs, not warned each time
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_run(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, warmup: int = 3, min_reps: int = 10,
             min_seconds: float = 1.0) -> dict:
    """Median and p90 ms of run(x) (measurement.time_runs' warm-up and repetition rule)."""
    import time

    def once() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            run(x)
        return (time.perf_counter() - t0) * 1000
    return time_runs(once, warmup=warmup, min_reps=min_reps, min_seconds=min_seconds)


# Runtimes whose speed is a property of each session: timed in this many fresh sessions, the fastest kept. An ONNX
# Runtime session on 2 cores now and then runs ~2-2.6x slower as a whole, in a process without PyTorch too
# (benchmarks/archive/ort_spinning.py, ort_process.py; docs/RESULTS.md).
FRESH_SESSIONS = {"onnxruntime": 2}


def time_sessions(runtime: str, new_run: Callable[[], Callable[[np.ndarray], np.ndarray]], x: np.ndarray,
                  **rule) -> dict:
    """time_run (with `rule`) of FRESH_SESSIONS[runtime] (default 1) runners, each from a fresh new_run() and
    released before the next; the fastest's timing, plus every session's median as session_medians_ms when
    there was more than one."""
    timings = [time_run(new_run(), x, **rule) for _ in range(FRESH_SESSIONS.get(runtime, 1))]
    best = dict(min(timings, key=lambda t: t["median_ms"]))
    if len(timings) > 1:
        best["session_medians_ms"] = [t["median_ms"] for t in timings]
    return best


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with each BatchNorm2d folded into the convolution before it (torch.fx's
    fuse). Models that torch.fx cannot trace are refused with the reason."""
    from torch.fx.experimental.optimization import fuse
    try:
        return fuse(copy.deepcopy(model).eval().float().cpu())
    except Exception as e:  # symbolic tracing fails on data-dependent control flow
        raise PrunelabError(f"cannot fold batch norms: torch.fx cannot trace this model ({type(e).__name__})") from e


def _torch_runner(model: nn.Module) -> Callable:
    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).float().numpy()
    return run


def prepare(name: str, model: nn.Module, input_size: int, workdir: str | Path, batch_size: int = 1,
            threads: int | None = None) -> Prepared:
    """Runtime `name` ready to run `model` on batches of `batch_size` (ONNX Runtime and eager PyTorch take any
    batch; OpenVINO and torch.compile are specialised to it)."""
    reason = missing(name)
    if reason:
        raise PrunelabError(reason)
    model = copy.deepcopy(model).float().eval().cpu().to(memory_format=torch.contiguous_format)
    workdir = Path(workdir)
    threads = threads or torch.get_num_threads()
    if name == "pytorch":
        return Prepared(name, _torch_runner(model))
    if name == "pytorch-fused":
        return Prepared(name, _torch_runner(fold_batchnorms(model)))
    if name == "torch-compile":
        return _compiled(fold_batchnorms(model), input_size, batch_size)
    onnx_path = workdir / "model.onnx"
    if not onnx_path.is_file():
        export_onnx(model, onnx_path, input_size=input_size)
    if name == "onnxruntime":
        session = ort_session(onnx_path, threads, save_optimized=workdir / "model.ort-optimized.onnx")
        return Prepared(name, lambda x: session.run(None, {"images": x})[0],
                        [onnx_path, workdir / "model.ort-optimized.onnx"])
    return Prepared(name, ov_runner(onnx_path, threads, batch_size), [onnx_path],  # name == "openvino"
                    note="fp32 inference precision, LATENCY hint")


def ov_runner(path: str | Path, threads: int, batch_size: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """images -> logits for an ONNX or OpenVINO IR file in OpenVINO CPU: LATENCY hint, fp32 inference precision,
    the input's batch fixed to `batch_size` (0: left dynamic, for evaluation on batches of any size)."""
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(path))
    if batch_size:
        shape = model.inputs[0].get_partial_shape()
        shape[0] = batch_size
        model.reshape({model.inputs[0].get_any_name(): shape})
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                                 **({"INFERENCE_NUM_THREADS": threads} if threads else {})})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)].copy()


def _compiled(model: nn.Module, input_size: int, batch_size: int) -> Prepared:
    """torch.compile in the mode that runs faster here: 'default' and 'max-autotune-no-cudagraphs' are both
    compiled and timed briefly on this batch size."""
    import time
    x = torch.randn(batch_size, 3, input_size, input_size)
    best = None
    for mode in ("default", "max-autotune-no-cudagraphs"):
        torch._dynamo.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn = torch.compile(copy.deepcopy(model), mode=mode, dynamic=False)
            with torch.inference_mode():
                for _ in range(3):
                    fn(x)  # compiles
                start = time.perf_counter()
                for _ in range(10):
                    fn(x)
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, mode, fn)
    return Prepared("torch-compile", _torch_runner(best[2]), note=f"mode {best[1]}")


def check(prepared: Prepared, reference: nn.Module, input_size: int, batch_size: int) -> float:
    """Max |difference| of the path's logits from eager PyTorch's on a random batch; raises PrunelabError
    beyond measurement.tolerance (ATOL + RTOL x the largest logit). The reference model is not changed."""
    x = np.random.default_rng(0).standard_normal((batch_size, 3, input_size, input_size), dtype=np.float32)
    with torch.inference_mode():
        ref = copy.deepcopy(reference).float().eval().cpu()(torch.from_numpy(x)).float().numpy()
    out = np.asarray(prepared.run(x))
    diff = float(np.abs(out - ref).max())
    allowed = tolerance(float(np.abs(ref).max()))
    if out.shape != ref.shape or diff > allowed:
        raise PrunelabError(f"runtime {prepared.runtime} differs from PyTorch by {diff:.2e} (> {allowed:.1e}); "
                            "not timed")
    return diff


def export_for(runtime: str, model: nn.Module, onnx_path: str | Path, input_size: int) -> list[Path]:
    """Beside an exported ONNX file: the files `runtime` loads fastest, checked against PyTorch first.
    onnxruntime: <stem>.ort-optimized.onnx (all graph optimisations; for the machine it was made on);
    openvino: <stem>.xml and <stem>.bin (OpenVINO IR, dynamic batch)."""
    reason = missing(runtime)
    if reason:
        raise PrunelabError(reason)
    onnx_path = Path(onnx_path)
    if runtime == "onnxruntime":
        target = onnx_path.with_name(onnx_path.stem + ".ort-optimized.onnx")
        write_atomic(target, lambda tmp: ort_session(onnx_path, save_optimized=tmp))
        session = ort_session(target)
        check(Prepared(runtime, lambda x: session.run(None, {"images": x})[0]), model, input_size, 2)
        return [target]
    import openvino as ov
    xml = onnx_path.with_suffix(".xml")
    ov_model = ov.Core().read_model(str(onnx_path))
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)  # writes xml and bin, fp32 weights
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    check(Prepared(runtime, lambda x: compiled(x)[compiled.output(0)]), model, input_size, 2)
    return [xml, xml.with_suffix(".bin")]


def latency(model: nn.Module, runtime: str, input_size: int, batch_size: int, workdir: str | Path,
            min_seconds: float = 0.3) -> float:
    """Median ms of one batch of `model` in `runtime` (checked against PyTorch first)."""
    path = prepare(runtime, model, input_size, workdir, batch_size=batch_size)
    check(path, model, input_size, batch_size)
    x = np.random.default_rng(0).standard_normal((batch_size, 3, input_size, input_size), dtype=np.float32)
    return time_run(path.run, x, min_seconds=min_seconds)["median_ms"]
