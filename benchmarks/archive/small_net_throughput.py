"""Training throughput of the seed-size pruned ResNet-18 (105 k params) in prunelab's loop, several ways.

Where `quick`'s time goes: most of it is the pruned model's final fine-tune, so its images/s decides the
preset's wall time. The variants run in this process on the same synthetic 32-px batches, interleaved over
several rounds (this machine's speed drifts for minutes at a time: compare ratios within a round), and the
table gives the median images/s of each and its ratio to prunelab's current path.

    python benchmarks/archive/small_net_throughput.py --rounds 3 --batches 40

Variants: precision (bf16 autocast / fp32), memory format (NCHW, which prunelab uses for this model on the
CPU, or channels_last with the unsafe strided 1x1 convolutions rewritten; see models.py), batch size, and
torch.compile (its compile time reported apart).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from prunelab.config import make_config
from prunelab.data import Split
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.prune import count_macs_params, prune_once
from prunelab.train import Trainer, make_optimizer, train_epoch


def seed_size_model() -> torch.nn.Module:
    """ResNet-18 (CIFAR stem) pruned in one shot to the seed's ratio 0.9 at round_to 2: 105,428 params."""
    torch.manual_seed(0)
    return prune_once(build_model("resnet18_cifar"), make_config("seed"), 0.9)


def unit_stride_1x1(model: torch.nn.Module) -> torch.nn.Module:
    """Every 1x1 convolution with stride s > 1 runs as x[:, :, ::s, ::s] then stride 1: the same arithmetic, but
    oneDNN never takes the strided-1x1 path whose channels_last backward pass corrupts memory with under 16
    input channels (oneDNN#6035, models.channels_last_unsafe_on_cpu), so the pruned model can be timed in
    channels_last at all. In place, for good: for this benchmark only."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.padding == (0, 0):
            s = m.stride
            m.register_forward_pre_hook(lambda _m, args, s=s: (args[0][:, :, ::s[0], ::s[1]], *args[1:]))
            m.stride = (1, 1)
    return model


def variants() -> dict:
    bf16 = {"precision": "bf16"}
    return {
        "nchw bf16 b128 (prunelab now)": ({**bf16, "channels_last": False}, False),
        "nchw fp32 b128": ({"precision": "fp32", "channels_last": False}, False),
        "nchw bf16 b256": ({**bf16, "channels_last": False, "batch_size": 256}, False),
        "nchw bf16 b512": ({**bf16, "channels_last": False, "batch_size": 512}, False),
        "channels_last bf16 b128 (safe rewrite)": ({**bf16, "channels_last": True}, False),
        "nchw bf16 b128 torch.compile": ({**bf16, "channels_last": False}, True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=40, help="timed batches of 128-image equivalents per variant and round")
    ap.add_argument("--only", nargs="*", default=None, help="names (substrings) of the variants to run")
    ap.add_argument("--json", default="benchmarks/results/small_net_throughput.json")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    n_images = 128 * args.batches
    split = Split(torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n_images,), generator=g))
    dense_pruned = seed_size_model()
    macs, params = count_macs_params(dense_pruned)
    print(f"model: {params:,} params, {macs / 1e6:.2f} M MACs; {torch.get_num_threads()} threads; {machine()['processor']} (bf16: {machine()['cpu_bf16']})")
    runs = {}
    for name, (over, compiled) in variants().items():
        if args.only and not any(o in name for o in args.only):
            continue
        cfg = make_config("seed", {"progress": False, **over})
        trainer = Trainer.from_config(cfg, torch.device("cpu"))
        model = copy.deepcopy(dense_pruned)
        if cfg.channels_last:
            unit_stride_1x1(model)
        model = model.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        net = model
        compile_s = None
        if compiled:
            net = torch.compile(model)
        opt = make_optimizer(model, cfg, 0.05)
        start = time.perf_counter()
        train_epoch(net, split.subset(torch.arange(2 * cfg.batch_size)), opt, None, trainer, g, desc=name)  # warm-up
        if compiled:
            compile_s = time.perf_counter() - start
        runs[name] = {"cfg": cfg, "trainer": trainer, "net": net, "opt": opt, "rates": [], "compile_s": compile_s}
    for r in range(args.rounds):
        for name, v in runs.items():
            stats = train_epoch(v["net"], split, v["opt"], None, v["trainer"], g, desc=name)
            v["rates"].append(stats["images_per_s"])
            print(f"round {r + 1}: {name}: {stats['images_per_s']:.0f} images/s")
    ref = next(iter(runs.values()))
    rows = []
    for name, v in runs.items():
        ratios = [a / b for a, b in zip(v["rates"], ref["rates"])]
        rows.append({"variant": name, "images_per_s_median": statistics.median(v["rates"]), "images_per_s": v["rates"],
                     "ratio_to_first_median": statistics.median(ratios), "compile_seconds": v["compile_s"]})
    print("\n| variant | images/s (median) | range | vs prunelab now (median of per-round ratios) | compile s |")
    print("| :--- | ---: | ---: | ---: | ---: |")
    for row in rows:
        rng = f"{min(row['images_per_s']):.0f}-{max(row['images_per_s']):.0f}"
        cs = f"{row['compile_seconds']:.0f}" if row["compile_seconds"] else ""
        print(f"| {row['variant']} | {row['images_per_s_median']:.0f} | {rng} | {row['ratio_to_first_median']:.2f}x | {cs} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "threads": torch.get_num_threads(), "params": params, "macs": macs,
                               "rounds": args.rounds, "images_per_round": n_images, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
