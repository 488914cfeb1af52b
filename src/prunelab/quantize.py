"""INT8 after pruning: post-training static quantisation of a run's final model, in one of two runtimes.

    openvino      NNCF's `nncf.quantize` of the OpenVINO model read from the ONNX file (its default preset:
                  symmetric int8, per-channel weights); <run>/int8/model-int8.xml + .bin (OpenVINO IR)
    onnxruntime   ONNX Runtime's `quantize_static`: QDQ format, per-channel int8 weights, uint8 activations,
                  MinMax calibration; <run>/int8/model-int8.onnx

    <run>/int8/model-fp32.onnx   the final model, exported (and, for ONNX Runtime, pre-processed)
    <run>/int8/results.json      accuracy, file size and latency of FP32 and INT8, both in the chosen runtime

`auto` picks OpenVINO when it and NNCF are installed (it measured faster at INT8 here: docs/RESULTS.md,
benchmarks/deploy.py), else ONNX Runtime.

Calibration uses training images only (spread evenly over the training split, never test images); accuracy
is measured on the run's test images with the same runtime that runs the model.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import modelfile, report
from .config import INT8_RUNTIMES
from .data import Normalizer, eval_batches, load_data
from .errors import PrunelabError
from .export import export_onnx
from .files import write_json
from .measurement import file_size_bytes, machine
from .rundir import open_existing
from .runtimes import missing, ort_session, ov_runner, time_sessions


def _nncf_missing() -> str:
    import importlib.util
    reason = missing("openvino")
    if not reason and importlib.util.find_spec("nncf") is None:
        reason = "INT8 in OpenVINO needs NNCF: pip install 'prunelab[openvino]'"
    return reason


def quant_runtime(name: str) -> str:
    """The runtime that `name` (auto | openvino | onnxruntime) quantises with; a one-line error if it is not
    installed or unknown."""
    if name not in INT8_RUNTIMES:
        raise PrunelabError(f"unknown INT8 runtime '{name}'; choose one of: {', '.join(INT8_RUNTIMES)}")
    if name == "auto":
        name = "openvino" if not _nncf_missing() else "onnxruntime"
    reason = _nncf_missing() if name == "openvino" else missing("onnxruntime")
    if reason:
        raise PrunelabError(reason)
    return name


def quantize_run(run_dir: str | Path, calibration_images: int = 300, batch_sizes=(1, 128), threads: int = 0,
                 data_dir: str | None = None, runtime: str = "auto") -> dict:
    """Quantise a finished run's final model to INT8 (see the module doc), and refresh the run's report; returns the
    result written to <run>/int8/results.json. Raises PrunelabError before any work if the run is unfinished, its data is gone or
    the runtime is not installed."""
    runtime = quant_runtime(runtime)
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
    model, desc = modelfile.load(rd.model_file("final"), named=cfg.model)  # the run names its builder
    inputs = data.inputs
    normalise = Normalizer(inputs.mean, inputs.std, "cpu", channels_last=False)
    out = rd.int8_dir
    out.mkdir(exist_ok=True)
    for old in [*out.glob("model-int8*"), out / "result.json", out / "results.json"]:  # an earlier result must
        old.unlink(missing_ok=True)                                                     # not outlive a failure
    fp32 = out / "model-fp32.onnx"
    tmp = out / "model-raw.onnx"
    export_onnx(model, tmp, input_size=inputs.image_size)
    if runtime == "onnxruntime":
        from onnxruntime.quantization.shape_inference import quant_pre_process
        quant_pre_process(str(tmp), str(fp32))
        tmp.unlink()
    else:
        tmp.replace(fp32)

    n = min(calibration_images, len(data.train))
    idx = torch.linspace(0, len(data.train) - 1, n).round().long()
    calibration = [normalise(images.cpu()).numpy() for images, _ in eval_batches(data.train.subset(idx), 32)]
    start = time.perf_counter()
    quantize = _quantize_openvino if runtime == "openvino" else _quantize_onnxruntime
    int8_files = quantize(fp32, out, calibration)
    seconds = time.perf_counter() - start

    result = {"calibration_images": n, "calibration_from": "training split", "quantize_seconds": seconds,
              "test_images": len(data.test), "runtime": runtime, "models": {}, "machine": machine()}
    for name, files in (("fp32", [fp32]), ("int8", int8_files)):
        run = _runner(runtime, files[0], threads)
        correct = 0
        for images, labels in eval_batches(data.test, 500):
            logits = run(normalise(images.cpu()).numpy())
            correct += int((logits.argmax(1) == labels.cpu().numpy()).sum())
        run = None  # (the evaluation session's threads go before the timed sessions start)
        latency = []
        for b in batch_sizes:
            x = np.random.default_rng(0).standard_normal((b, 3, inputs.image_size, inputs.image_size), dtype=np.float32)
            r = time_sessions(runtime, lambda: _runner(runtime, files[0], threads, batch_size=b), x)  # as bench does
            latency.append({"runtime": runtime, "device": "cpu", "batch_size": b, **r})
        result["models"][name] = {"accuracy": correct / len(data.test),
                                  "file_size_bytes": sum(file_size_bytes(f) for f in files), "latency": latency}
    result["pytorch_accuracy"] = desc["metrics"]["accuracy"]
    write_json(rd.int8_results, result)
    report.refresh(rd.path)  # the report gains the INT8 rows
    return result


def _quantize_onnxruntime(fp32: Path, out: Path, calibration: list) -> list[Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": x} for x in calibration])

        def get_next(self):
            return next(self.batches, None)

    int8 = out / "model-int8.onnx"
    tmp = int8.with_suffix(".tmp.onnx")
    quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    tmp.replace(int8)
    return [int8]


def _quantize_openvino(fp32: Path, out: Path, calibration: list) -> list[Path]:
    import logging

    import nncf
    import openvino as ov
    nncf.set_log_level(logging.ERROR)
    images = [x[i:i + 1] for x in calibration for i in range(len(x))]  # one image per calibration item
    quantized = nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset(images), subset_size=len(images))
    xml, tmp = out / "model-int8.xml", out / "model-int8.tmp.xml"
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))  # the weights first: the .xml names a finished pair
    tmp.replace(xml)
    return [xml, xml.with_suffix(".bin")]


def _runner(runtime: str, path: Path, threads: int, batch_size: int = 0):
    """images -> logits for the model file `path` in `runtime` (OpenVINO compiled for `batch_size`; 0: any)."""
    if runtime == "onnxruntime":
        session = ort_session(path, threads)
        return lambda x: session.run(None, {"images": x})[0]
    return ov_runner(path, threads, batch_size)
