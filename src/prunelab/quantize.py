"""INT8 after pruning: post-training static quantisation of a run's final model with ONNX Runtime.

    <run>/int8/model-fp32.onnx   the final model, exported and pre-processed (shape inference, folding)
    <run>/int8/model-int8.onnx   QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration
    <run>/int8/result.json       accuracy, file size and latency of FP32 and INT8, both in ONNX Runtime

Calibration uses training images only (spread evenly over the training split, never test images); accuracy
is measured on the run's test images with the same runtime that runs the model.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import modelfile
from .config import PrunelabError
from .data import eval_batches, load_data
from .files import write_json
from .measurement import file_size_bytes, machine
from .runtimes import ort_session, time_run
from .rundir import open_existing


def _normalised(images: torch.Tensor, mean, std) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1) * 255
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1) * 255
    return ((images.cpu().numpy().astype(np.float32) - m) / s).astype(np.float32)


def quantize_run(run_dir: str | Path, calibration_images: int = 300, batch_sizes=(1, 128), threads: int = 0,
                 data_dir: str | None = None) -> dict:
    """Quantise a finished run's final model to INT8 (see the module doc); returns the result written to
    <run>/int8/result.json. Raises PrunelabError before any work if the run is unfinished or its data is gone."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise PrunelabError("INT8 quantisation needs onnx and onnxruntime: pip install 'prunelab[onnx]'")
    rd, cfg = open_existing(run_dir)
    if data_dir:  # the same data in another place (a runtime setting; config.json is not changed)
        import dataclasses
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    if not rd.results.is_file():
        raise PrunelabError(f"{rd.path} has not finished; finish it with `prunelab run --resume {rd.path}` before "
                            "quantising its final model")
    if calibration_images < 1:
        raise PrunelabError(f"calibration_images must be at least 1, got {calibration_images}")
    data = load_data(cfg)  # missing data: a one-line error here, before anything is written
    if len(data.train) == 0:
        raise PrunelabError("no training images to calibrate INT8 on; point --data-dir at the run's data")
    model, desc = modelfile.load(rd.checkpoint_named("final").with_suffix(".json"))
    inputs = data.inputs
    out = rd.path / "int8"
    out.mkdir(exist_ok=True)
    from .export import export_onnx
    raw, fp32, int8 = out / "model-raw.onnx", out / "model-fp32.onnx", out / "model-int8.onnx"
    export_onnx(model, raw, input_size=inputs.image_size)
    quant_pre_process(str(raw), str(fp32))
    raw.unlink()

    n = min(calibration_images, len(data.train))
    idx = torch.linspace(0, len(data.train) - 1, n).round().long()
    calibration = data.train.subset(idx)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": _normalised(images, inputs.mean, inputs.std)}
                                 for images, _ in eval_batches(calibration, 32)])

        def get_next(self):
            return next(self.batches, None)

    start = time.perf_counter()
    tmp = int8.with_suffix(".tmp.onnx")
    quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    tmp.replace(int8)
    seconds = time.perf_counter() - start

    result = {"calibration_images": n, "calibration_from": "training split", "quantize_seconds": seconds,
              "test_images": len(data.test), "runtime": "onnxruntime", "models": {}, "machine": machine()}
    for name, path in (("fp32", fp32), ("int8", int8)):
        s = ort_session(path, threads)
        correct = 0
        for images, labels in eval_batches(data.test, 500):
            logits = s.run(None, {"images": _normalised(images, inputs.mean, inputs.std)})[0]
            correct += int((logits.argmax(1) == labels.cpu().numpy()).sum())
        latency = []
        for b in batch_sizes:
            x = np.random.default_rng(0).standard_normal((b, 3, inputs.image_size, inputs.image_size), dtype=np.float32)
            latency.append({"runtime": "onnxruntime", "device": "cpu", "batch_size": b,
                            **time_run(lambda x, s=s: s.run(None, {"images": x}), x)})
        result["models"][name] = {"accuracy": correct / len(data.test), "file_size_bytes": file_size_bytes(path),
                                  "latency": latency}
    result["pytorch_accuracy"] = desc["metrics"]["accuracy"]
    write_json(out / "result.json", result)
    from .report import build_results, render
    results = build_results(rd.path)  # the report gains the INT8 rows
    write_json(rd.results, results)
    render(rd.path, results)
    return result
