"""Save and load (pruned) models without pickles: safetensors weights plus a JSON description.

`<stem>.safetensors` holds the state dict; `<stem>.json` names the base model, the pruning history that
turns it into the pruned structure, the SHA-256 of the weights, and provenance (config, metrics,
versions). Loading rebuilds the dense model, replays the history, checks every shape and loads.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import PrunelabError
from .files import write_atomic, write_json
from .models import build_model
from .prune import layer_widths, rebuild

FORMAT = "prunelab-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    import torch_pruning
    import torchvision
    return {"prunelab": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": getattr(torch_pruning, "__version__", "unknown")}


def save_model(stem: str | Path, model: nn.Module, model_name: str, pruning_history: list,
               extra: dict | None = None) -> Path:
    """Write <stem>.safetensors then <stem>.json (the JSON last: a model is complete once its JSON exists).
    Returns the path of the weights file."""
    stem = Path(stem)
    weights, desc = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    num_classes = model.fc.out_features if hasattr(model, "fc") else None
    write_json(desc, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": model_name, "num_classes": num_classes,
        "weights_file": weights.name, "weights_sha256": _sha256(weights),
        "pruning_history": pruning_history, "layer_widths": layer_widths(model),
        "versions": versions(), **(extra or {}),
    })
    return weights


def resolve_model_path(path: str | Path, which: str = "final") -> Path:
    """A model file from a run directory (its checkpoints/<which>.json) or a model file given directly."""
    p = Path(path)
    if p.is_dir():
        desc = p / "checkpoints" / f"{which}.json"
        if not desc.is_file():
            raise PrunelabError(f"{p} has no checkpoints/{which}.json; is it a finished prunelab run directory?")
        return desc
    return p


def read_description(path: str | Path) -> tuple[dict, Path]:
    """The JSON description of a saved model (given the .json or the .safetensors path) and its weights path."""
    p = Path(path)
    desc_path = p if p.suffix == ".json" else p.with_suffix(".json")
    if not p.exists():
        raise PrunelabError(f"model file not found: {p}")
    if p.suffix in PICKLE_SUFFIXES:
        raise PrunelabError(f"{p} looks like a pickle, which can run code when loaded; prunelab loads .safetensors "
                            "+ .json models (pass --trust-pickle only for a file you made yourself)")
    if not desc_path.is_file():
        raise PrunelabError(f"{desc_path} not found: a prunelab model needs its .json description beside the weights")
    try:
        desc = json.loads(desc_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrunelabError(f"{desc_path} is not valid JSON ({e}); the file is damaged, export the model again")
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise PrunelabError(f"{desc_path} is not a prunelab model description (no \"format\": \"{FORMAT}\")")
    if desc.get("format_version", 0) > FORMAT_VERSION:
        raise PrunelabError(f"{desc_path} has format version {desc.get('format_version')}, newer than this prunelab "
                            f"understands ({FORMAT_VERSION}); upgrade prunelab")
    return desc, desc_path.with_name(desc.get("weights_file", p.with_suffix(".safetensors").name))


def load_model(path: str | Path, device: str | torch.device = "cpu", trust_pickle: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild a saved model in any process: returns (model in eval mode, its JSON description).
    `path` is a run directory (its final model), a .safetensors or a .json file. A whole-model pickle
    (.pt/.pth) is loaded only with trust_pickle=True, since unpickling can run arbitrary code."""
    path = resolve_model_path(path)
    if path.suffix in PICKLE_SUFFIXES and trust_pickle and path.is_file():
        model = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(model, nn.Module):
            raise PrunelabError(f"{path} holds a {type(model).__name__}, not a whole model; save it with prunelab instead")
        return model.eval(), {"model": type(model).__name__, "pruning_history": None, "source": "pickle"}
    desc, weights = read_description(path)
    if not weights.is_file():
        raise PrunelabError(f"weights file {weights} named by the description is missing")
    if desc.get("weights_sha256") and _sha256(weights) != desc["weights_sha256"]:
        raise PrunelabError(f"{weights} does not match the checksum in its description: the file is truncated "
                            "or was changed; copy or export it again")
    model = rebuild(desc["model"], desc.get("pruning_history") or [], desc.get("num_classes") or 10)
    load_weights(model, weights)
    return model.to(device).eval(), desc


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a safetensors state dict into `model`, with one clear error if anything does not fit."""
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunelabError(f"cannot read weights {weights} ({str(e).splitlines()[0][:100]}); "
                            "the file is damaged or not safetensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        what = (f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}" if unexpected
                else f"{wrong[0]} is {tuple(state[wrong[0]].shape)} but the model has {tuple(own[wrong[0]].shape)}")
        raise PrunelabError(f"weights {weights} do not fit the model ({what}); "
                            "they belong to another architecture or pruned structure")
    model.load_state_dict(state)


def load_dense_baseline(path: str | Path, model_name: str, num_classes: int = 10) -> nn.Module:
    """A dense model from a plain safetensors state dict (such as a model trained elsewhere)."""
    p = Path(path)
    if p.suffix != ".safetensors":
        raise PrunelabError(f"baseline {p} must be a .safetensors state dict (pickled .pt files are refused)")
    if p.with_suffix(".json").is_file():
        model, desc = load_model(p)
        if desc.get("pruning_history"):
            raise PrunelabError(f"baseline {p} is already pruned; pass a dense model to --baseline")
        return model
    model = build_model(model_name, num_classes)
    load_weights(model, p)
    return model


def export_onnx(model: nn.Module, path: str | Path, input_size: int = 32, opset: int = 17,
                atol: float = 1e-4) -> dict:
    """Write an ONNX model with a dynamic batch dimension, check it with onnx.checker, and compare
    onnxruntime's outputs with PyTorch's on random inputs at two batch sizes. Returns the check's numbers."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise PrunelabError("ONNX export needs the onnx and onnxruntime packages: pip install 'prunelab[onnx]'")
    import numpy as np

    model = model.float().eval().cpu().to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 3, input_size, input_size)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)

    write_atomic(path, write)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    max_diff = 0.0
    for batch in (1, 7):
        xb = torch.randn(batch, 3, input_size, input_size)
        with torch.inference_mode():
            ref = model(xb).numpy()
        out = session.run(None, {"images": xb.numpy()})[0]
        max_diff = max(max_diff, float(np.abs(out - ref).max()))
    if max_diff > atol:
        Path(path).unlink(missing_ok=True)
        raise PrunelabError(f"ONNX export differs from PyTorch by {max_diff:.2e} (> {atol}); not written")
    return {"onnx_path": str(path), "max_abs_diff": max_diff, "opset": opset}
