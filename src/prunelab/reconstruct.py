"""Right after a cut, fit the pruned network to the network it was cut from, one unit at a time.

A cut removes channels whose contribution the next layers still expect. Layer-wise reconstruction (He et al. 2017,
ThiNet 2017) refits what remains so that each part reproduces the outputs it had before the cut; done here by a few
hundred gradient steps per unit, as in BRECQ (Li et al. 2021). A *unit* is every module with parameters that is not a
container (nn.Sequential, nn.ModuleList, nn.ModuleDict), in forward order: for a ResNet the stem convolution and batch
norm, each residual block, and the classifier. For each unit, in order:

- its input is the pruned network's own feature map there (so a unit makes up for what the units before it still
  miss), its target the model-before-the-cut's output of the same unit, on the channels the cut kept;
- it is trained alone (Adam, cosine to zero, batch 128, in train mode) to minimise the squared error relative to the
  target's mean square.

Units whose output the cut left as it was (error below 1e-6), that run more than once per forward pass, or take other
than one tensor are left alone. Training images only, mirrored at random, no other augmentation; the caller
re-estimates the batch-norm statistics afterwards (the units trained in train mode).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split, augment_batch, eval_batches
from .distributed import log

# what one captured unit input or target may hold, in bytes; fewer images are used where a feature map is larger
CAPTURE_BYTES = 1 << 30
BATCH = 128


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the unit's tensor is captured."""


def units(model: nn.Module) -> list[str]:
    """Names of the modules with parameters that are no container, in registration order (forward order for the
    torchvision and timm CNNs)."""
    out = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
                walk(f"{prefix}{name}.", child)
            elif next(child.parameters(), None) is not None:
                out.append(f"{prefix}{name}")

    walk("", model)
    return out


def kept_out_channels(model: nn.Module, removed: dict[str, list[int]], unit: str, before_channels: int,
                      after_channels: int) -> torch.Tensor | None:
    """Which of the `before_channels` output channels of `unit` the cut kept: those of the last module inside it whose
    out-channel count went from `before_channels` to `after_channels`, by the indices `removed` records per module
    name. All of them where the count did not change; None where no module inside explains the change."""
    if before_channels == after_channels:
        return torch.arange(before_channels)
    inside = [n for n, _ in model.get_submodule(unit).named_modules(prefix=unit)]
    for name in reversed(inside):
        gone = removed.get(name)
        if gone is not None and before_channels - len(set(gone)) == after_channels:
            keep = sorted(set(range(before_channels)) - set(gone))
            if len(keep) == after_channels:
                return torch.tensor(keep)
    return None


def _capture(model: nn.Module, unit: str, x: torch.Tensor, want: str) -> torch.Tensor | None:
    """The input (want="input") or output of `unit` for the images `x`, by forward passes in eval mode that stop
    there; None if the unit runs more than once per pass or its input/output is not one tensor."""
    module = model.get_submodule(unit)
    got, calls = [], []

    def hook(m, args, out):
        calls.append(1)
        t = args[0] if want == "input" and len(args) == 1 else out if want == "output" else None
        if not isinstance(t, torch.Tensor):
            raise _Stop
        got.append(t.detach().float())
        raise _Stop

    handle = module.register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), 256):
                n = len(got)
                try:
                    model(x[start:start + 256])
                except _Stop:
                    pass
                if len(got) != n + 1:
                    return None
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(got)


def _relative_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, target) / target.pow(2).mean().clamp_min(1e-12)


def reconstruct(before: nn.Module, pruned: nn.Module, removed: dict[str, list[int]], split: Split, normalizer,
                images: int, steps: int, seed: int, lr: float = 1e-3) -> dict:
    """Fit `pruned` unit by unit to `before` (the model just before the cut; see the module doc) on `images` images
    of `split` drawn with `seed`. `removed`: the out-channel indices the cut removed, per module name. Both models on
    the CPU or the same device; `before` is left as it was. Returns what was done: seconds, images, and per unit the
    relative error before and after (or why it was left alone)."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    n = min(images, len(split))
    part = split.subset(torch.randperm(len(split), generator=g)[:n].to(split.labels.device))
    x = torch.cat([normalizer(augment_batch(u8, "none", 0, True, g)).float() for u8, _ in eval_batches(part, 256)])
    device = next(pruned.parameters()).device
    x = x.to(device)
    before_units, names = set(units(before)), units(pruned)
    was = pruned.training
    dtype = next(pruned.parameters()).dtype
    pruned.float()
    before = before.float()
    report = {}
    for name in names:
        if name not in before_units:
            report[name] = "not in the model before the cut"
            continue
        target = _capture(before, name, x[:1], "output")
        if target is None:
            report[name] = "not one tensor, or runs more than once per forward pass"
            continue
        m = min(n, CAPTURE_BYTES // max(1, target[0].numel() * 4))  # images whose maps fit the memory
        if m < 2:
            report[name] = "too few images for a batch"
            continue
        target = _capture(before, name, x[:m], "output")
        inputs = _capture(pruned, name, x[:m], "input")
        if inputs is None:
            report[name] = "input not one tensor, or runs more than once per forward pass"
            continue
        keep = kept_out_channels(pruned, removed, name, target.shape[1], _capture(pruned, name, x[:1], "output").shape[1]) \
            if target.dim() >= 2 else None
        if keep is None:
            report[name] = "cannot tell which output channels the cut kept"
            continue
        target = target[:, keep.to(target.device)]
        unit = pruned.get_submodule(name)
        unit.eval()
        with torch.no_grad():
            err0 = float(sum(_relative_error(unit(inputs[i:i + 256]), target[i:i + 256]) * len(target[i:i + 256])
                             for i in range(0, m, 256)) / m)
        if err0 < 1e-6:
            report[name] = [err0, err0]
            continue
        params = [p for p in unit.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
        unit.train()
        for _ in range(steps):
            b = torch.randint(0, m, (min(BATCH, m),), generator=g).to(device)
            loss = _relative_error(unit(inputs[b]), target[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        unit.eval()
        with torch.no_grad():
            err1 = float(sum(_relative_error(unit(inputs[i:i + 256]), target[i:i + 256]) * len(target[i:i + 256])
                             for i in range(0, m, 256)) / m)
        report[name] = [round(err0, 5), round(err1, 5)]
        del inputs, target
    pruned.to(dtype).train(was)
    seconds = time.perf_counter() - start
    fitted = [k for k, v in report.items() if isinstance(v, list) and v[0] != v[1]]
    log(f"reconstruction: {len(fitted)} of {len(names)} units fitted to the model before the cut on {n:,} images "
        f"({seconds:.0f} s)")
    return {"seconds": round(seconds, 1), "images": n, "steps": steps, "units": report}
