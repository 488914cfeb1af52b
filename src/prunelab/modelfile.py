"""The model file format, and nothing else: safetensors weights plus a JSON description. No pickles.

`<stem>.safetensors` holds the state dict; `<stem>.json` holds the model spec (builder, its kwargs, classes,
stem, dropped blocks: models.ModelSpec), the input spec (image size, mean/std, class names: data.InputSpec), the
pruning history that turns the dense model (less its dropped blocks) into the pruned structure, the SHA-256 of the
weights, and provenance (config, metrics, versions). A spec whose builder is a user's `module:function` imports that module and
calls it when loaded, so it is built only when the caller trusts the file (trust_code) or names that builder itself: a
file from elsewhere could name any function. A spec with builder "module" (an nn.Module handed to the API)
needs the same dense module passed to `load(..., model=)`. Loading: read the description -> build the dense model -> replay the history -> check every
shape and load the weights. `load` is the one place that does this, for users and for resumed runs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import PrunelabError
from .config import NORMALIZATIONS
from .files import write_atomic, write_json
from .models import InputSpec, ModelSpec, build, drop_blocks, num_outputs, user_code
from .prune import layer_widths, replay_structure

FORMAT = "prunelab-model"
FORMAT_VERSION = 2  # 2: the spec may name dropped blocks (depth pruning); files without them are still written as 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(path: str | Path) -> str:
    """The SHA-256 of a model's weights: a .safetensors file, or the one a prunelab .json description names."""
    p = Path(path)
    return _sha256(describe(p)[1] if p.suffix == ".json" else p)


def versions() -> dict:
    """Versions for a model file's provenance. Torch-Pruning's from the installed package's metadata: its module
    attribute lags (torch-pruning 1.6.1 reports __version__ 1.6.0)."""
    from importlib.metadata import PackageNotFoundError, version

    import torchvision
    try:
        tp = version("torch-pruning")
    except PackageNotFoundError:  # a source checkout on sys.path
        import torch_pruning
        tp = getattr(torch_pruning, "__version__", "unknown")
    return {"prunelab": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": tp}


def save(stem: str | Path, model: nn.Module, spec: ModelSpec | str, pruning_history: list,
         extra: dict | None = None, inputs: InputSpec | None = None) -> Path:
    """Write <stem>.safetensors then <stem>.json (the JSON last: a model is complete once its JSON exists).
    `spec` may be a builder name (its class count is read off the model). Returns the path of the weights file."""
    stem = Path(stem)
    if isinstance(spec, str):
        spec = ModelSpec(builder=spec, num_classes=num_outputs(model))
    weights, desc = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    write_json(desc, {
        "format": FORMAT, "format_version": FORMAT_VERSION if spec.dropped_blocks else 1,
        "model": spec.builder, "num_classes": spec.num_classes,
        "spec": spec.to_dict(), "inputs": (inputs or default_inputs(spec.num_classes)).to_dict(),
        "weights_file": weights.name, "weights_sha256": _sha256(weights),
        "pruning_history": pruning_history, "layer_widths": layer_widths(model),
        "versions": versions(), **(extra or {}),
    })
    return weights


def default_inputs(num_classes: int = 10) -> InputSpec:
    """What files written before input specs existed were: 32 px, the seed's normalisation."""
    mean, std = NORMALIZATIONS["cifar10"]
    return InputSpec(32, tuple(mean), tuple(std), tuple(f"class{i}" for i in range(num_classes)))


def specs(desc: dict) -> tuple[ModelSpec, InputSpec]:
    """The model and input specs of a description (older files: from their "model" and "num_classes")."""
    spec = ModelSpec.from_dict(desc["spec"]) if "spec" in desc else \
        ModelSpec(builder=desc["model"], num_classes=desc.get("num_classes") or 10)
    inputs = InputSpec.from_dict(desc["inputs"]) if "inputs" in desc else default_inputs(spec.num_classes)
    return spec, inputs


def describe(path: str | Path) -> tuple[dict, Path]:
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


def load(path: str | Path, device: str | torch.device = "cpu", trust_pickle: bool = False,
         replay: Callable[[nn.Module, list], None] | None = None, model: nn.Module | None = None,
         trust_code: bool = False, named: str = "") -> tuple[nn.Module, dict]:
    """Rebuild a saved model in any process: returns (model in eval mode, its JSON description).
    `path` is a .safetensors or a .json file (rundir.model_file finds one in a run directory). `replay(model, history)`
    turns the freshly built dense model into the pruned structure (a resumed run passes one that also
    restores its pruner). `model`: the dense nn.Module to start from, needed when the file was made from a
    module handed to the API (its builder is "module"); it is copied, not changed. A whole-model pickle
    (.pt/.pth) is loaded only with trust_pickle=True, since unpickling can run arbitrary code. A description whose
    builder is Python code (package.module:function, imported and called to build the model) is built only with
    trust_code=True or when the caller `named` that same builder (--model, --teacher-model): a file from elsewhere
    could name any function."""
    path = Path(path)
    if path.is_dir():
        raise PrunelabError(f"{path} is a folder; pass a model file (.json or .safetensors), or load a run "
                            "directory's model with prunelab.load")
    if path.suffix in PICKLE_SUFFIXES and trust_pickle and path.is_file():
        model = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(model, nn.Module):
            raise PrunelabError(f"{path} holds a {type(model).__name__}, not a whole model; save it with prunelab instead")
        return model.eval(), {"model": type(model).__name__, "pruning_history": None, "source": "pickle"}
    desc, weights = describe(path)
    if not weights.is_file():
        raise PrunelabError(f"weights file {weights} named by the description is missing")
    if desc.get("weights_sha256") and _sha256(weights) != desc["weights_sha256"]:
        raise PrunelabError(f"{weights} does not match the checksum in its description: the file is truncated "
                            "or was changed; copy or export it again")
    spec, inputs = specs(desc)
    if model is not None:
        import copy
        net = drop_blocks(copy.deepcopy(model).cpu(), spec.dropped_blocks)
    elif spec.builder == "module":
        raise PrunelabError(f"{path} was made from an nn.Module given to prunelab.run, so prunelab cannot build it: "
                            "pass the same dense module, prunelab.load(path, model=MyNet())")
    else:
        if user_code(spec.builder) and not trust_code and spec.builder != named:
            raise PrunelabError(f"{path} builds its model by calling {spec.builder}, Python code named in the file; "
                                "prunelab calls it only for a file you trust: pass --trust-code (prunelab.load(..., "
                                f"trust_code=True)), or for a run's --teacher or --baseline name it yourself "
                                f"(--teacher-model or --model {spec.builder})")
        net = build(spec)
    if replay is None:
        replay_structure(net, desc.get("pruning_history") or [], inputs.image_size)
    else:
        replay(net, desc.get("pruning_history") or [])
    load_weights(net, weights)
    return net.to(device).eval(), desc


def read_tensor(path: str | Path, name: str):
    """One tensor of a model file (given its .json or .safetensors), as a numpy array, without building the model."""
    from safetensors import safe_open
    _, weights = describe(path)
    try:
        with safe_open(str(weights), "np") as f:
            return f.get_tensor(name)
    except (SafetensorError, OSError) as e:
        raise PrunelabError(f"cannot read {name} from {weights} ({type(e).__name__}); the file is damaged")


def read_state_dict(weights: str | Path) -> dict:
    """The tensors of a safetensors file, with one clear error for a damaged one."""
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunelabError(f"cannot read weights {weights} ({str(e).splitlines()[0][:100]}); "
                            "the file is damaged or not safetensors")


def without_ddp_prefix(state: dict) -> dict:
    """A state dict saved from a DistributedDataParallel wrapper (every name starting "module.") without that prefix."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a safetensors state dict into `model`, with one clear error if anything does not fit."""
    state = without_ddp_prefix(read_state_dict(weights))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        what = (f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}" if unexpected
                else f"{wrong[0]} is {tuple(state[wrong[0]].shape)} but the model has {tuple(own[wrong[0]].shape)}")
        raise PrunelabError(f"weights {weights} do not fit the model ({what}); "
                            "they belong to another architecture or pruned structure")
    from collections import OrderedDict
    state = OrderedDict(state)
    state._metadata = getattr(own, "_metadata", None)  # module versions (MNASNet checks them); safetensors has none
    model.load_state_dict(state)


def load_any(path: str | Path, spec: ModelSpec) -> tuple[nn.Module, InputSpec | None]:
    """A model to run (a teacher): a prunelab model file (any architecture, pruned or not; its input spec too; a
    user's builder only if it is `spec`'s), or a plain safetensors state dict of the network `spec` describes (no
    input spec: None)."""
    p = Path(path)
    if p.suffix in PICKLE_SUFFIXES:
        raise PrunelabError(f"{p} looks like a pickle, which can run code when loaded; pass a .safetensors file or a "
                            "prunelab model file")
    if p.suffix == ".json" or p.with_suffix(".json").is_file():
        net, desc = load(p, named=spec.builder)
        return net, specs(desc)[1]
    if p.suffix != ".safetensors":
        raise PrunelabError(f"{p} is neither a prunelab model file (.json) nor a .safetensors state dict")
    net = build(spec)
    load_weights(net, p)
    return net.eval(), None


def load_dense_baseline(path: str | Path, spec: ModelSpec | str, num_classes: int = 10,
                        model: nn.Module | None = None) -> nn.Module:
    """A dense model from a prunelab model file or a plain safetensors state dict (such as torchvision's or timm's
    state dict of the same network saved with safetensors.torch.save_file; a "module." prefix from DDP is
    dropped). With `model`, the weights go into a copy of that module."""
    p = Path(path)
    if isinstance(spec, str):
        spec = ModelSpec(builder=spec, num_classes=num_classes)
    if p.suffix != ".safetensors":
        raise PrunelabError(f"baseline {p} must be a .safetensors state dict (pickled .pt files are refused; convert "
                            "with safetensors.torch.save_file(torch.load(f), 'dense.safetensors') if you trust it)")
    if p.with_suffix(".json").is_file():
        net, desc = load(p, model=model, named=spec.builder)
        if desc.get("pruning_history") or specs(desc)[0].dropped_blocks:
            raise PrunelabError(f"baseline {p} is already pruned; pass a dense model to --baseline")
        return net
    import copy
    net = copy.deepcopy(model) if model is not None else build(spec)
    load_weights(net, p)
    return net
