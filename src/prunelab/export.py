"""Deployment formats: ONNX (checked against PyTorch before it is kept). Saving and loading prunelab's own
model files is modelfile.py's job."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .errors import PrunelabError
from .files import write_atomic
from .measurement import tolerance


def export_onnx(model: nn.Module, path: str | Path, input_size: int = 32, opset: int = 17) -> dict:
    """Write an ONNX model with a dynamic batch dimension, check it with onnx.checker, and compare
    onnxruntime's outputs with PyTorch's on random inputs at two batch sizes (measurement.tolerance). Exports an
    fp32 eval-mode copy: the caller's model keeps its dtype, device, mode and memory format. Returns the check's
    numbers."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise PrunelabError("ONNX export needs the onnx and onnxruntime packages: pip install 'prunelab[onnx]'")
    import numpy as np

    model = copy.deepcopy(model).float().eval().cpu().to(memory_format=torch.contiguous_format)
    g = torch.Generator().manual_seed(0)  # the caller's random generator is left alone
    x = torch.randn(2, 3, input_size, input_size, generator=g)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)

    try:
        write_atomic(path, write)
    except torch.onnx.errors.OnnxExporterError as e:  # SymbolicValueError and UnsupportedOperatorError among them
        first = str(e).strip().splitlines()[0][:200]
        raise PrunelabError(f"ONNX export of this model at {input_size} px failed ({type(e).__name__}: {first}); "
                            "a larger --image-size may avoid it (VGG's 7x7 adaptive pooling needs >= 224 px)")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    max_diff, scale = 0.0, 0.0
    for batch in (1, 7):
        xb = torch.randn(batch, 3, input_size, input_size, generator=g)
        with torch.inference_mode():
            ref = model(xb).numpy()
        out = session.run(None, {"images": xb.numpy()})[0]
        max_diff, scale = max(max_diff, float(np.abs(out - ref).max())), max(scale, float(np.abs(ref).max()))
    allowed = tolerance(scale)
    if max_diff > allowed:
        Path(path).unlink(missing_ok=True)
        raise PrunelabError(f"ONNX export differs from PyTorch by {max_diff:.2e} (> {allowed:.1e} for the largest "
                            f"logit {scale:.3g}); not written")
    return {"onnx_path": str(path), "max_abs_diff": max_diff, "tolerance": allowed, "opset": opset}
