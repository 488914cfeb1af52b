"""Does reconstructing each block's output right after a cut give the short fine-tune a better start, and a better end?

A study, not a product path. Runs `prunelab run` with one change: after every pruning step's batch-norm re-estimate,
the pruned network is fitted block by block to the dense network it was cut from (the model just before the step):
for each unit in forward order (the stem, every residual block, the classifier), the pruned unit is trained with Adam
to reproduce the dense unit's output on the channels it kept, fed the pruned network's own features of the previous
unit (so later units make up for earlier errors), on `--images` training images of the step's split (flip only).
Then the batch-norm statistics are re-estimated again and the run continues as usual. This is layer-wise
reconstruction (He et al. 2017, ThiNet 2017) done by gradient steps per block, as in BRECQ (Li et al. 2021).

Torchvision ResNets only (stem conv1/bn1, layer1..4 of blocks, fc). Which dense channels a pruned unit kept is read
from its last batch norm's affine weights, which a cut copies and the re-estimate leaves alone.

    python benchmarks/reconstruct_probe.py --images 2560 --steps 300 -- <prunelab run arguments>
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import augment_batch, eval_batches


def units(model: nn.Module) -> list[tuple[str, nn.Module, nn.BatchNorm2d | None]]:
    """(name, module, the batch norm whose channels are the unit's output) in forward order."""
    out = [("stem", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool), model.bn1)]
    for s in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, s)):
            out.append((f"{s}.{i}", block, block.bn2 if hasattr(block, "bn2") else block.bn3))
    out.append(("head", nn.Sequential(model.avgpool, nn.Flatten(1), model.fc), None))
    return out


def kept_channels(dense_bn: nn.BatchNorm2d, pruned_bn: nn.BatchNorm2d) -> torch.Tensor:
    """Indices into the dense batch norm of the pruned one's channels, matched on (weight, bias)."""
    dw, db = dense_bn.weight.detach(), dense_bn.bias.detach()
    pw, pb = pruned_bn.weight.detach(), pruned_bn.bias.detach()
    eq = (pw[:, None] == dw[None, :]) & (pb[:, None] == db[None, :])
    if not bool((eq.sum(1) == 1).all()):
        raise SystemExit("cannot match the pruned channels to the dense ones (train after the cut?)")
    return eq.float().argmax(1)


def reconstruct(dense: nn.Module, pruned: nn.Module, split, trainer, images: int, steps: int, lr: float,
                seed: int) -> dict:
    """Fit `pruned` unit by unit to `dense` (see the module doc). Returns per-unit losses before and after."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=g)[:images]
    part = split.subset(idx.to(split.labels.device))
    xs = []
    for images_u8, _ in eval_batches(part, 256):
        xs.append(trainer.normalizer(augment_batch(images_u8, "none", 0, True, g)).float())
    x = torch.cat(xs)
    dense = dense.float().eval()
    pruned.float()
    d_in, p_in = x, x
    report = {}
    for (name, du, dbn), (_, pu, pbn) in zip(units(dense), units(pruned)):
        with torch.no_grad():
            target = torch.cat([du(d_in[i:i + 256]) for i in range(0, len(d_in), 256)])
            if dbn is not None:
                target = target[:, kept_channels(dbn, pbn)]
        params = [p for p in pu.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        pu.train()

        def loss_of(a, b):
            return F.mse_loss(a, b) / b.pow(2).mean().clamp_min(1e-8)

        with torch.no_grad():
            pu.eval()
            before = float(loss_of(torch.cat([pu(p_in[i:i + 256]) for i in range(0, len(p_in), 256)]), target))
            pu.train()
        for step in range(steps):
            b = torch.randint(0, len(p_in), (128,), generator=g)
            loss = loss_of(pu(p_in[b]), target[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        pu.eval()
        with torch.no_grad():
            out = torch.cat([pu(p_in[i:i + 256]) for i in range(0, len(p_in), 256)])
            after = float(loss_of(out, target))
            d_in = torch.cat([du(d_in[i:i + 256]) for i in range(0, len(d_in), 256)])
        p_in = out
        report[name] = [round(before, 4), round(after, 4)]
        print(f"reconstruct {name}: relative error {before:.4f} -> {after:.4f}", flush=True)
    pruned.train()
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(f"reconstruction: {report['seconds']} s", flush=True)
    return report


def main() -> None:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2560)
    ap.add_argument("--steps", type=int, default=300, help="Adam steps (batch 128) per unit")
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv[:cut])
    import prunelab.pipeline as pipeline
    real_step, real_bn = pipeline.prune_step, pipeline.reestimate_batchnorm
    pending = {}

    def prune_step(pruner, model, gradient_batches=None):
        pending["dense"] = copy.deepcopy(model)
        return real_step(pruner, model, gradient_batches)

    def reestimate_batchnorm(model, split, trainer, images, seed):
        n = real_bn(model, split, trainer, images, seed)
        dense = pending.pop("dense", None)
        if dense is not None:
            reconstruct(dense, model, split, trainer, args.images, args.steps, args.lr, seed)
            n = real_bn(model, split, trainer, images, seed)
        return n

    pipeline.prune_step, pipeline.reestimate_batchnorm = prune_step, reestimate_batchnorm
    from prunelab.cli import main as prunelab_main
    return prunelab_main(["run", *argv[cut + 1:]])


if __name__ == "__main__":
    sys.exit(main())
