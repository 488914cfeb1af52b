"""Which block type spends the seed's budget (<= 5.29 M MACs and <= 105,428 params) best, before any training:
ResNet-18 (resnet18_cifar), MLPerf Tiny's ResNet-8 (as published, and 24 wide with its first stage at 16 x 16) and a
CIFAR MobileNetV2 (benchmarks/cifar_nets.py), each pruned uniformly by prunelab (`ratio_for_target` under both caps,
the `full` preset's settings: L2, round_to 2, the classifier kept; no fill_budget). For each: the ratio, MACs,
params, the distinct widths left, and how fast the pruned network trains on this CPU (SGD steps on random 32 px
batches of 128, bf16 autocast where prunelab would use it, NCHW, the threads given; median of the timed steps) with
the epochs of 50,000 images that two hours of training would hold at that speed (training only: no evaluation, no
data loading). Prints a table and writes JSON (optional path).

    PYTHONPATH=benchmarks python benchmarks/block_type_budget.py [--threads 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifar_nets import mobilenet_v2_cifar, resnet8
from prunelab.config import make_config
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.models import resnet18_cifar
from prunelab.prune import count_macs_params, layer_widths, prune_once
from prunelab.targets import ratio_for_target
from prunelab.train import autocast_dtype

MACS, PARAMS = 5.29e6, 105_428


def prune_to_caps(model: nn.Module, cfg) -> tuple[float, nn.Module]:
    ratio = ratio_for_target(model, cfg, target_macs=MACS, target_params=PARAMS, num_classes=10)
    return ratio, prune_once(model, cfg, ratio, image_size=32, num_classes=10)


def train_speed(model: nn.Module, amp: torch.dtype | None, steps: int = 30, warmup: int = 5,
                batch: int = 128) -> float:
    """Training images per second (autocast to `amp`, None: fp32): median over `steps` SGD steps after `warmup`."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = make_config("full", {})
    amp = autocast_dtype(cfg.precision, torch.device("cpu"))  # as prunelab trains on this CPU
    rows = {}
    for name, build in (("resnet18_cifar", resnet18_cifar), ("resnet8 (MLPerf Tiny)", resnet8),
                        ("resnet8, width 24, first stride 2", lambda num_classes: resnet8(num_classes, 24, 2)),
                        ("mobilenet_v2_cifar", mobilenet_v2_cifar)):
        dense = build(num_classes=10)
        dense_macs, dense_params = count_macs_params(dense, 32)
        ratio, pruned = prune_to_caps(dense, cfg)
        macs, params = count_macs_params(pruned, 32)
        speed = train_speed(pruned, amp)
        rows[name] = {"dense_macs": dense_macs, "dense_params": dense_params, "ratio": ratio, "macs": macs,
                      "params": params, "widths": sorted(set(layer_widths(pruned).values())),
                      "train_images_per_s": speed, "epochs_in_2h": 7200 * speed / 50_000}
    rows = {"machine": machine(), "threads": args.threads, "autocast": str(amp), "networks": rows}
    print(f"{rows['machine']['processor']}, bf16 {rows['machine']['cpu_bf16']}, {args.threads} threads, autocast {amp}\n")
    print("| network | dense MACs / params | ratio | MACs | params | widths | train img/s | epochs in 2 h |")
    print("| :--- | ---: | ---: | ---: | ---: | :--- | ---: | ---: |")
    for name, r in rows["networks"].items():
        print(f"| {name} | {r['dense_macs'] / 1e6:.1f} M / {r['dense_params'] / 1e3:.0f} k | {r['ratio']:.3f} | "
              f"{r['macs'] / 1e6:.2f} M | {r['params']:,} | {r['widths']} | {r['train_images_per_s']:.0f} | "
              f"{r['epochs_in_2h']:.0f} |")
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
