"""Right after a cut, fit the pruned network to the network it was cut from, one unit at a time.

A cut removes channels whose contribution the next layers still expect. Layer-wise reconstruction (He et al. 2017,
ThiNet 2017) refits what remains so that each part reproduces the outputs it had before the cut; done here by a few
hundred gradient steps per unit, as in BRECQ (Li et al. 2021). A *unit* is every module with parameters that is not a
container (nn.Sequential, nn.ModuleList, nn.ModuleDict), in forward order: for a ResNet the stem convolution and batch
norm, each residual block, and the classifier. For each unit, in order:

- its input is the pruned network's own feature map there (so a unit makes up for what the units before it still
  miss), its target the model-before-the-cut's output of the same unit, on the channels the cut kept;
- it is trained alone (Adam, cosine to zero, batch 128; batch norms in train mode, dropout off) to minimise the
  squared error relative to the target's mean square, on 7 in 8 of the images; the 8th judges the fit: a unit whose
  error on those held-out images does not fall is put back as the cut left it (with few images, a large unit learns
  them instead of the function);
- its batch-norm statistics are then re-estimated from its inputs, so that the next unit's input is what the
  network computes in eval mode, as deployed.

If in the end the pruned network's logits on the held-out images are no closer to those of the model before the cut
than the cut left them, the whole reconstruction is undone. The targets of all units come from one forward pass of
the model before the cut (only the kept channels are stored); each unit's input from a pass of the pruned network
that stops at it. Units whose output the cut left as it was (error below 1e-6), that run more than once per forward
pass, or take or return other than one tensor (such as a block that concatenates branches, where the kept channels
are not those of one layer) are left alone. Training images only, mirrored at random where training mirrors, no
other augmentation. Forward passes in the run's autocast precision (bf16 where the CPU has it: 1.4-1.6x faster than
fp32 at the same start accuracy, RESULTS 7.34; fp32 instead of fp16, which would need a gradient scaler), targets and
losses in fp32.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split, augment_batch, eval_batches
from .distributed import log
from .train import batch_norms, fresh_statistics

# what the dense targets of all units may hold together, in bytes; fewer images are used where they would not fit
TARGET_BYTES = 2 << 30
BATCH = 128
CHECK_SHARE = 8  # one image in this many judges each unit's fit; the others fit it


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the unit's input is captured."""


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
    """Which of the `before_channels` output channels of `unit` the cut kept: those of the last module inside it (in
    `model`, after the cut) that is now `after_channels` wide and lost channels of `before_channels`, by the indices
    `removed` records per module name. All of them where the count did not change; None where no module inside
    explains the change (a unit that concatenates branches: one branch's channels are not the unit's)."""
    if before_channels == after_channels:
        return torch.arange(before_channels)
    for name, module in reversed(list(model.get_submodule(unit).named_modules(prefix=unit))):
        gone = removed.get(name)
        width = next((getattr(module, a) for a in ("out_channels", "num_features", "out_features")
                      if isinstance(getattr(module, a, None), int)), None)
        if gone is not None and width == after_channels and before_channels - len(set(gone)) == after_channels:
            return torch.tensor(sorted(set(range(before_channels)) - set(gone)))
    return None


def _outputs(model: nn.Module, names: list[str], x: torch.Tensor, keep: dict[str, torch.Tensor] | None = None,
             amp: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The output of every unit in `names` for the images `x` (eval mode, no gradient), only the channels `keep`
    names for a unit where given; units that run more than once per pass or return other than one tensor are left
    out."""
    got, calls = {n: [] for n in names}, {n: 0 for n in names}
    handles = []
    for name in names:
        def hook(m, args, out, name=name):
            calls[name] += 1
            if isinstance(out, torch.Tensor):
                t = out.detach().float()
                got[name].append(t[:, keep[name]] if keep is not None and name in keep else t)
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(x, amp):
            for start in range(0, len(x), 256):
                model(x[start:start + 256])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    batches = -(-len(x) // 256)
    return {n: torch.cat(got.pop(n)) for n in names if calls[n] == batches and len(got[n]) == batches}


def _input(model: nn.Module, name: str, x: torch.Tensor, amp: torch.dtype | None = None) -> torch.Tensor | None:
    """The input of unit `name` for the images `x`, by forward passes in eval mode that stop there; None unless it
    is one tensor."""
    got = []

    def hook(m, args):
        if len(args) == 1 and isinstance(args[0], torch.Tensor):
            got.append(args[0].detach().float())
        raise _Stop

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(x, amp):
            for start in range(0, len(x), 256):
                try:
                    model(x[start:start + 256])
                except _Stop:
                    pass
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(got) if len(got) == -(-len(x) // 256) else None


def _autocast(x: torch.Tensor, amp: torch.dtype | None):
    return torch.autocast(x.device.type, dtype=amp, enabled=amp is not None)


def _fitting_mode(unit: nn.Module) -> None:
    """Batch norms in train mode (normalising by the batch, as the re-estimate afterwards will describe), everything
    else in eval mode: no dropout or stochastic depth while a unit is fitted to a deterministic target."""
    unit.eval()
    for m in batch_norms(unit):
        m.train()


def _refresh_statistics(unit: nn.Module, inputs: torch.Tensor, amp: torch.dtype | None = None) -> None:
    """The unit's batch-norm running statistics re-estimated from its `inputs` (train.fresh_statistics, in equal
    batches), and the unit put in eval mode: the next unit's input is then what the fitted unit computes in eval
    mode."""
    _fitting_mode(unit)
    try:
        with fresh_statistics(unit), torch.no_grad(), _autocast(inputs, amp):
            for chunk in torch.tensor_split(inputs, max(1, len(inputs) // BATCH)):
                unit(chunk)
    finally:
        unit.eval()


def _relative_error(unit: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                    amp: torch.dtype | None = None) -> float:
    with torch.no_grad(), _autocast(inputs, amp):
        err = sum(F.mse_loss(unit(inputs[i:i + 256]).float(), target[i:i + 256], reduction="sum")
                  for i in range(0, len(inputs), 256))
    return float(err / target.pow(2).sum().clamp_min(1e-12))


def _logits(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None = None) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad(), _autocast(x, amp):
        out = torch.cat([model(x[i:i + 256]).float() for i in range(0, len(x), 256)])
    model.train(was)
    return out


def _logits_error(model: nn.Module, x: torch.Tensor, reference: torch.Tensor,
                  amp: torch.dtype | None = None) -> float:
    return float(F.mse_loss(_logits(model, x, amp), reference) / reference.pow(2).mean().clamp_min(1e-12))


def reconstruct(before: nn.Module, pruned: nn.Module, removed: dict[str, list[int]], split: Split, normalizer,
                images: int, steps: int, seed: int, lr: float = 1e-3, amp: torch.dtype | None = None,
                flip: bool = True) -> dict:
    """Fit `pruned` unit by unit to `before` (the model just before the cut; see the module doc) on `images` images
    of `split` drawn with `seed` (fewer where the dense targets of all units would pass TARGET_BYTES). `removed`: the
    out-channel indices the cut removed, per module name. Both models on the same device; `before` is put in fp32.
    Returns what was done: seconds, images, and per unit the relative error before and after (or why it was left
    alone)."""
    start = time.perf_counter()
    if amp is torch.float16:  # (no gradient scaler here: fp16 gradients of a mean over feature maps underflow)
        amp = None
    g = torch.Generator().manual_seed(seed)
    device = next(pruned.parameters()).device
    was, dtype = pruned.training, next(pruned.parameters()).dtype
    pruned.float()
    before = before.float()
    names = [n for n in units(pruned) if n in set(units(before))]
    report = {n: "not in the model before the cut" for n in units(pruned) if n not in names}
    perm = torch.randperm(len(split), generator=g)

    def images_of(idx: torch.Tensor) -> torch.Tensor:  # normalised, mirrored at random where training mirrors
        part = split.subset(idx.to(split.labels.device))
        return torch.cat([normalizer(augment_batch(u8, "none", 0, flip, g)).float()
                          for u8, _ in eval_batches(part, 256)]).to(device)

    probe = images_of(perm[:2])  # the output shapes: which channels each unit kept
    shapes_before, shapes_after = _outputs(before, names, probe), _outputs(pruned, names, probe)
    keep = {}
    for name in names:
        if name not in shapes_before or name not in shapes_after or shapes_before[name].dim() < 2:
            report[name] = "not one tensor, or runs more than once per forward pass"
            continue
        k = kept_out_channels(pruned, removed, name, shapes_before[name].shape[1], shapes_after[name].shape[1])
        if k is None:
            report[name] = "cannot tell which output channels the cut kept"
        else:
            keep[name] = k.to(device)
    per_image = sum(shapes_after[n][0].numel() for n in keep) * 4
    n = min(images, len(split), TARGET_BYTES // max(1, per_image))
    if n < 2 * CHECK_SHARE or not keep:
        log("reconstruction: skipped (" + (f"fewer than {2 * CHECK_SHARE} images, or their feature maps pass "
                                           f"{TARGET_BYTES >> 30} GiB" if n < 2 * CHECK_SHARE else "no unit to fit")
            + ")")
        pruned.to(dtype).train(was)
        return {"seconds": round(time.perf_counter() - start, 1), "images": 0, "steps": steps, "units": report}
    x = images_of(perm[:n])
    targets = _outputs(before, list(keep), x, keep, amp)  # one pass of the model before the cut
    held_out = x[n - n // CHECK_SHARE:]
    logits = _logits(before, held_out, amp)
    del before
    logits_error = _logits_error(pruned, held_out, logits, amp)
    as_cut = copy.deepcopy(pruned.state_dict())
    for name in names:
        if name not in keep:
            continue
        inputs, target, unit = _input(pruned, name, x, amp), targets.pop(name), pruned.get_submodule(name)
        if inputs is None:
            report[name] = "input not one tensor"
            continue
        fit, check = slice(0, n - n // CHECK_SHARE), slice(n - n // CHECK_SHARE, n)  # fit on most, judge on the rest
        unit.eval()
        err0 = _relative_error(unit, inputs[check], target[check], amp)
        if err0 < 1e-6:
            report[name] = [err0, err0]
            continue
        trainable = [p for p in unit.parameters() if p.requires_grad]
        if not trainable:
            report[name] = "no trainable parameters"
            continue
        kept = copy.deepcopy(unit.state_dict())
        opt = torch.optim.Adam(trainable, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
        _fitting_mode(unit)
        m = fit.stop
        for _ in range(steps):
            b = torch.randint(0, m, (min(BATCH, m),), generator=g).to(device)
            with _autocast(inputs, amp):
                out = unit(inputs[b])
            t = target[b]
            loss = F.mse_loss(out.float(), t) / t.pow(2).mean().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        _refresh_statistics(unit, inputs[fit], amp)
        err1 = _relative_error(unit, inputs[check], target[check], amp)
        if err1 < err0:
            report[name] = [round(err0, 5), round(err1, 5)]
        else:  # it learned the fitting images, not the function: keep the cut's weights
            unit.load_state_dict(kept)
            report[name] = f"left as cut: error on held-out images {err0:.4f} -> {err1:.4f}"
        del inputs, target
    logits_error = [logits_error, _logits_error(pruned, held_out, logits, amp)]
    undone = not logits_error[1] < logits_error[0]
    if undone:  # units each closer to their targets, the whole further from the model before the cut
        pruned.load_state_dict(as_cut)
    pruned.to(dtype).train(was)
    seconds = time.perf_counter() - start
    fitted = [k for k, v in report.items() if isinstance(v, list) and v[0] != v[1]]
    log(f"reconstruction: {len(fitted)} of {len(report)} units fitted to the model before the cut on {n:,} images "
        f"({seconds:.0f} s); relative error of the logits on {len(held_out):,} held-out images {logits_error[0]:.4f} "
        f"-> {logits_error[1]:.4f}" + ("; further than the cut left them, so undone" if undone else ""))
    return {"seconds": round(seconds, 1), "images": n, "steps": steps, "units": report,
            "logits_error": [round(e, 5) for e in logits_error], "undone": undone}
