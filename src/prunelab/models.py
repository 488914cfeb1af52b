"""Model builders by name, and what every other module needs to know about a model.

`--model` names one of:
- `resnet18_cifar`: the seed's network (torchvision's ResNet-18 with the small-input stem below);
- any classification model of torchvision (`torchvision.models.list_models(module=torchvision.models)`);
- `timm:<name>`: a timm model (the optional extra: `pip install prunelab[timm]`);
- `package.module:function`: the user's own builder, called with the JSON `--model-kwargs` (and
  `num_classes=` when its signature takes it). Loading a model saved from it imports that module: it is
  the user's code, run as code, not a pickle.
The Python API also takes a ready nn.Module (recorded as builder "module": loading it needs the same module).

A `ModelSpec` is the description every module reads instead of constants: builder, its kwargs, number of
classes, the small-input stem. It is stored in every model file, so a fresh process rebuilds the network.
Module names follow torchvision's, so state dicts interchange with other code that builds the same network.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torchvision

from .errors import PrunelabError

# Families Torch-Pruning cannot prune structurally (its README's list of unsupported operations), refused before
# any training starts: name prefix -> why.
UNPRUNABLE = {
    "shufflenet_v2": "its channel shuffle reorders channels between groups, which Torch-Pruning cannot follow",
    "swin": "its shifted-window attention reshapes channels into heads, which Torch-Pruning cannot follow",
    "maxvit": "its block and grid attention reshape channels into heads, which Torch-Pruning cannot follow",
    "vit_": "its attention heads need head-aware pruning (Torch-Pruning's ViT recipe), not channel pruning",
}
# torchvision builders whose auxiliary classifiers change the training output: built without them.
_NO_AUX = {"googlenet": {"aux_logits": False}, "inception_v3": {"aux_logits": False}}


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a network: its builder, the builder's kwargs, the class count, and the stem option."""
    builder: str
    num_classes: int
    kwargs: dict = field(default_factory=dict)
    small_input_stem: bool = False
    dropped_blocks: tuple = ()  # blocks replaced by nn.Identity (depth pruning, drop_blocks), in this order

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("dropped_blocks")
        return {**d, "dropped_blocks": list(self.dropped_blocks)} if self.dropped_blocks else d  # (files as before)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(builder=d["builder"], num_classes=int(d["num_classes"]), kwargs=dict(d.get("kwargs") or {}),
                   small_input_stem=bool(d.get("small_input_stem", False)),
                   dropped_blocks=tuple(d.get("dropped_blocks") or ()))


@dataclass(frozen=True)
class InputSpec:
    """What a model's input is: square images of `image_size` px, normalised with per-channel `mean` and `std`
    (0-1 scale), and the class names. Stored in every model file; read by measurement, export and reports.
    Lives beside ModelSpec: a model file describes both."""
    image_size: int
    mean: tuple
    std: tuple
    classes: tuple

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), tuple(d.get("classes") or ()))


def torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def small_input_stem(model: nn.Module) -> nn.Module:
    """The seed's stem for 32-64 px inputs on a ResNet-family model: conv1 becomes 3x3 / stride 1 / padding 1
    without bias, and the max-pool is removed."""
    if not (isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool")):
        raise PrunelabError(f"--small-input-stem applies to ResNet-family models (conv1 + maxpool); "
                            f"{type(model).__name__} has no such stem: drop the option")
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32x32 inputs, as in the seed project:
    conv1 becomes 3x3 / stride 1 / padding 1 without bias, and the max-pool is removed.
    11,173,962 parameters and 0.557 GMACs at 32x32 with 10 classes."""
    return small_input_stem(torchvision.models.resnet18(num_classes=num_classes))


def user_code(name: str) -> bool:
    """Whether building `name` imports and calls the user's Python code (package.module:function)."""
    return ":" in name and not name.startswith("timm:")


def check_name(name: str) -> None:
    """Refuse, before any data is read, a model name that names nothing (with suggestions) or a family that
    Torch-Pruning cannot prune structurally (UNPRUNABLE)."""
    base = name.split(":", 1)[1] if name.startswith("timm:") else name
    for prefix, why in UNPRUNABLE.items():
        if base.startswith(prefix):
            raise PrunelabError(f"model '{name}' cannot be pruned structurally: {why}; choose another model")
    if name == "resnet18_cifar" or name.startswith("timm:") or ":" in name:
        return
    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names + ["resnet18_cifar"], n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise PrunelabError(f"unknown model '{name}'{hint}; use resnet18_cifar, a torchvision classification model "
                            "(torchvision.models.list_models()), timm:<name>, or package.module:function")


def pretrained_weights(name: str, weights: str = "DEFAULT"):
    """The published weights that `weights` names for model `name`, checked without downloading anything: a
    torchvision WeightsEnum member ("DEFAULT" or a member name such as IMAGENET1K_V2), or for timm:<arch> the full
    timm name "arch.tag" ("DEFAULT": timm's default tag). resnet18_cifar takes resnet18's (its 3x3 stem does not
    load). Refuses, with the names there are, a model without published weights or a name it does not know."""
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise PrunelabError(f"model '{name}' needs timm: pip install 'prunelab[timm]'")
        arch = name[len("timm:"):].split(".", 1)[0]
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(arch + ".*") if n.split(".", 1)[0] == arch]
        if not tags:
            raise PrunelabError(f"timm publishes no pretrained weights for '{arch}'; drop --pretrained, or pass your "
                                "own file with --init-from")
        if weights == "DEFAULT":
            return arch + "." + timm.models.get_pretrained_cfg(arch).tag
        if weights not in tags:
            raise PrunelabError(f"timm has no weights '{weights}' for {arch}; choose one of: {', '.join(tags)} (or "
                                "--pretrained alone for the default)")
        return f"{arch}.{weights}"
    if ":" in name or name == "module":
        raise PrunelabError(f"--pretrained needs a torchvision or timm model, not '{name}'; for your own builder pass "
                            "its weights with --init-from FILE")
    base = "resnet18" if name == "resnet18_cifar" else name
    try:
        enum = torchvision.models.get_model_weights(base)
    except (ValueError, KeyError):
        raise PrunelabError(f"torchvision publishes no pretrained weights for '{name}'; drop --pretrained, or pass "
                            "your own file with --init-from")
    names = [w.name for w in enum]
    if weights != "DEFAULT" and weights not in names:
        raise PrunelabError(f"torchvision has no weights '{weights}' for {base}; choose one of: DEFAULT, "
                            f"{', '.join(names)}")
    return enum[weights]


def pretrained_normalization(name: str, weights: str = "DEFAULT") -> tuple[list, list]:
    """The mean and std (0-1 scale) that the published weights were trained with: torchvision's
    weights.transforms(), timm's pretrained_cfg."""
    entry = pretrained_weights(name, weights)
    if isinstance(entry, str):
        import timm
        cfg = timm.models.get_pretrained_cfg(entry)
        return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
    t = entry.transforms()
    return [float(v) for v in t.mean], [float(v) for v in t.std]


def _user_builder(name: str):
    module_name, _, fn_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PrunelabError(f"cannot import module '{module_name}' for model '{name}' ({e}); install it or put its "
                            "folder on PYTHONPATH")
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise PrunelabError(f"module '{module_name}' has no function '{fn_name}'; --model takes package.module:function")
    return fn


def build(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network as `spec` describes it."""
    name, n, kwargs = spec.builder, spec.num_classes, dict(spec.kwargs)
    if name == "module":
        raise PrunelabError("this model was given to prunelab as an nn.Module, so prunelab cannot build it: "
                            "pass the same dense module (prunelab.load(path, model=MyNet()))")
    check_name(name)
    if name == "resnet18_cifar":
        model = resnet18_cifar(num_classes=n)
    elif name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise PrunelabError(f"model '{name}' needs timm: pip install 'prunelab[timm]'")
        try:
            model = timm.create_model(name[len("timm:"):], pretrained=False, num_classes=n, **kwargs)
        except RuntimeError as e:  # timm's "Unknown model"
            raise PrunelabError(f"timm has no model '{name[5:]}' ({str(e)[:100]}); see timm.list_models()")
    elif ":" in name:
        fn = _user_builder(name)
        params = inspect.signature(fn).parameters
        takes_classes = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
        try:
            model = fn(**kwargs, **({"num_classes": n} if takes_classes and "num_classes" not in kwargs else {}))
        except TypeError as e:
            raise PrunelabError(f"calling {name}(**{kwargs}) failed ({e}); fix --model-kwargs")
        if not isinstance(model, nn.Module):
            raise PrunelabError(f"{name} returned a {type(model).__name__}, not a torch.nn.Module")
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=n, **{**_NO_AUX.get(name, {}), **kwargs})
    if spec.small_input_stem:
        model = small_input_stem(model)
    return drop_blocks(model, spec.dropped_blocks)


def drop_blocks(model: nn.Module, names) -> nn.Module:
    """Depth pruning: each named block ("layer3.1") replaced by nn.Identity, in place; returns `model`. A residual
    block whose output has its input's shape then passes its input on, as its shortcut did: the blocks around it
    and their weights are unchanged. Which blocks can go: droppable_blocks."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            parent = None
        if parent is None or not isinstance(getattr(parent, child, None), nn.Module):
            raise PrunelabError(f"drop_blocks: {type(model).__name__} has no block '{name}'; name a module as "
                                "model.named_modules() does, e.g. layer3.1")
        setattr(parent, child, nn.Identity())
    return model


def droppable_blocks(model: nn.Module, image_size: int) -> list[str]:
    """The blocks drop_blocks may remove: elements of an nn.Sequential or nn.ModuleList that hold a convolution and
    whose output has the shape of their (one) input, found by one forward pass of a zero image through an fp32 CPU
    copy of `model` in eval mode (a model on any device or dtype)."""
    probe = copy.deepcopy(model).float().cpu().eval()
    seen = {}
    for parent_name, parent in probe.named_modules():
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            continue
        for child_name, child in parent.named_children():
            if any(isinstance(m, nn.Conv2d) for m in child.modules()):
                name = f"{parent_name}.{child_name}" if parent_name else child_name

                def hook(module, args, out, name=name):
                    if len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                        seen[name] = args[0].shape == out.shape
                child.register_forward_hook(hook)
    try:
        with torch.no_grad():
            probe(torch.zeros(1, 3, image_size, image_size))
    except Exception as e:
        raise PrunelabError(f"{type(model).__name__} fails on one {image_size} px image ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''}); check --image-size") from e
    return [name for name, same in seen.items() if same]


def check_drop_blocks(model: nn.Module, names, image_size: int) -> None:
    """Before any training: every name is a block droppable_blocks allows (else one error listing those)."""
    if not names:
        return
    allowed = droppable_blocks(model, image_size)
    outermost = [a for a in allowed if not any(a.startswith(b + ".") for b in allowed)]
    for name in names:
        if name not in allowed:
            raise PrunelabError(f"--drop-blocks: '{name}' is not a block that can be removed (an element of a "
                                "Sequential with a convolution, whose output has its input's shape); "
                                f"{type(model).__name__} can lose: {' '.join(outermost) or 'none'}")
    if any(a.startswith(b + ".") for a in names for b in names):  # (names twice: config.validate refuses them)
        raise PrunelabError(f"--drop-blocks names a block and one inside it ({' '.join(names)}); name the outer one")


def build_model(name: str, num_classes: int = 10, **spec) -> nn.Module:
    """build(ModelSpec(name, num_classes, ...)): the short form."""
    return build(ModelSpec(builder=name, num_classes=num_classes, **spec))


def classifier(model: nn.Module, num_classes: int | None = None) -> nn.Module:
    """The layer whose outputs are the classes (pruning must leave it alone): the last Linear or 1x1-able Conv2d
    in the model whose output size is `num_classes` (default: that of the last Linear/Conv2d)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise PrunelabError(f"{type(model).__name__} has no Linear or Conv2d layer; prunelab prunes CNNs")
    width = lambda m: m.out_features if isinstance(m, nn.Linear) else m.out_channels  # noqa: E731
    n = num_classes if num_classes is not None else width(layers[-1])
    found = [m for m in layers if width(m) == n]
    if not found:
        raise PrunelabError(f"{type(model).__name__} has no layer with {n} outputs to serve as the classifier; "
                            "check --num-classes")
    return found[-1]


def num_outputs(model: nn.Module) -> int:
    c = classifier(model)
    return c.out_features if isinstance(c, nn.Linear) else c.out_channels


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first convolution (its filters are drawn in filters.png)."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def channels_last_unsafe_on_cpu(model: nn.Module) -> str:
    """The name of a convolution that oneDNN's CPU backward pass mishandles in channels_last, or "".
    A 1x1 convolution with stride > 1 and fewer than 16 input channels per group (the ResNet downsample
    of a heavily pruned model) writes past a workspace when its weight gradient is computed in NHWC:
    oneDNN issue uxlfoundation/oneDNN#6035 ("1x1 convolution backward_weights writes past the rtus
    workspace (nhwc, IC < ic_block)"). With torch 2.14.1 on this project's CPUs it aborts the process
    ("corrupted size vs. prev_size") on odd batch sizes. Such models train in NCHW on the CPU."""
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
                and m.in_channels // m.groups < 16):
            return name
    return ""
