"""Dense ResNet-18 training throughput: prunelab's loop beside the seed notebook's loop.

The seed's loop: torchvision DataLoader over PIL images with RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor and Normalize per image, fp32, NCHW, batch 128.
prunelab's loop: the whole set as a uint8 tensor, batched crop/flip, bf16 autocast where the CPU has it
(else fp32), channels_last.
Both run in this process, on the same images, interleaved over several rounds; the table gives the
median images/s of each and their ratio. Writes the table as JSON too.

    python benchmarks/train_throughput.py --data-dir ../shared/data/cifar10-jpeg

With `--against REF` (a git commit), prunelab's loop also runs with the data path (data.py's
train_batches) of that commit, in the same rounds: a change to the data path is no slower when the
ratio current / REF is about 1. With `--nchw`, prunelab's loop also runs in NCHW (`channels_last = false`) in the
same rounds: which layout trains faster on this CPU and precision.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from prunelab.config import make_config
from prunelab.data import Split, load_data
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.train import Trainer, make_optimizer, train_epoch


class PILDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 array -> PIL image -> transforms."""

    def __init__(self, split: Split, transform):
        self.images = split.images.permute(0, 2, 3, 1).numpy()
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def seed_loop(split: Split, cfg, batches: int, warmup: int, workers: int) -> float:
    """Images/s of the seed's loop over `batches` timed batches after `warmup` untimed ones."""
    torch.manual_seed(0)
    model = build_model("resnet18_cifar").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(cfg.mean, cfg.std)])
    loader = torch.utils.data.DataLoader(PILDataset(split, tf), batch_size=128, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=False)
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            seen, start = 0, time.perf_counter()
        if i == warmup + batches:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def data_module_at(ref: str):
    """prunelab's data.py as it was at git commit `ref`, imported as a module of the prunelab package."""
    source = subprocess.run(["git", "show", f"{ref}:src/prunelab/data.py"], capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp()) / "data_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("prunelab.data_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def prunelab_loop(split: Split, cfg, batches: int, warmup: int, train_batches=None) -> float:
    """prunelab's training loop; `train_batches`: another version of data.train_batches to use instead."""
    import prunelab.train
    current = prunelab.train.train_batches
    prunelab.train.train_batches = train_batches or current
    try:
        return _prunelab_loop(split, cfg, batches, warmup)
    finally:
        prunelab.train.train_batches = current


def _prunelab_loop(split: Split, cfg, batches: int, warmup: int) -> float:
    torch.manual_seed(0)
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    model = build_model("resnet18_cifar")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg, 0.01)
    g = torch.Generator().manual_seed(0)
    train_epoch(model, split.subset(torch.arange(warmup * 128)), opt, None, trainer, g, desc="warm-up")
    stats = train_epoch(model, split.subset(torch.arange(warmup * 128, (warmup + batches) * 128)), opt, None,
                        trainer, g, desc="prunelab")
    return stats["images_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/cifar10-jpeg")
    p.add_argument("--batches", type=int, default=20, help="timed batches of 128 per loop and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median is reported)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the seed loop (Colab's default 2)")
    p.add_argument("--against", metavar="REF", help="also time prunelab's loop with data.py of this git commit")
    p.add_argument("--nchw", action="store_true", help="also time prunelab's loop in NCHW (channels_last off)")
    p.add_argument("--json", default="benchmarks/results/train_throughput.json")
    args = p.parse_args()
    reference = data_module_at(args.against) if args.against else None

    n = (args.warmup + args.batches) * 128
    cfg = make_config("seed", {"data_dir": args.data_dir, "train_subset": n, "test_subset": 10, "progress": False})
    split = load_data(cfg).train
    nchw_cfg = dataclasses.replace(cfg, channels_last=False)
    seed_ips, ours_ips, ref_ips, nchw_ips = [], [], [], []
    for r in range(args.rounds):
        seed_ips.append(seed_loop(split, cfg, args.batches, args.warmup, args.workers))
        ours_ips.append(prunelab_loop(split, cfg, args.batches, args.warmup))
        line = f"round {r + 1}: seed loop {seed_ips[-1]:.1f} img/s, prunelab loop {ours_ips[-1]:.1f} img/s"
        if reference:
            ref_ips.append(prunelab_loop(split, cfg, args.batches, args.warmup, reference.train_batches))
            line += f", prunelab loop with the data path of {args.against} {ref_ips[-1]:.1f} img/s"
        if args.nchw:
            nchw_ips.append(prunelab_loop(split, nchw_cfg, args.batches, args.warmup))
            line += f", prunelab loop in NCHW {nchw_ips[-1]:.1f} img/s"
        print(line, flush=True)
    seed_med, ours_med = statistics.median(seed_ips), statistics.median(ours_ips)
    result = {"benchmark": "train_throughput", "model": "resnet18_cifar (dense)", "batch_size": 128,
              "timed_batches": args.batches, "rounds": args.rounds, "seed_loop_workers": args.workers,
              "seed_loop_images_per_s": seed_ips, "prunelab_loop_images_per_s": ours_ips,
              "seed_median": seed_med, "prunelab_median": ours_med, "ratio": ours_med / seed_med,
              "prunelab_precision": str(Trainer.from_config(cfg, torch.device("cpu")).amp_dtype or "fp32"),
              "machine": machine()}
    if reference:
        result.update({"against": args.against, "against_images_per_s": ref_ips,
                       "against_median": statistics.median(ref_ips),
                       "ratio_current_vs_against": ours_med / statistics.median(ref_ips)})
    if args.nchw:
        result.update({"nchw_images_per_s": nchw_ips, "nchw_median": statistics.median(nchw_ips),
                       "ratio_channels_last_vs_nchw": ours_med / statistics.median(nchw_ips)})
    print()
    print("| loop | images/s (median of %d) | spread |" % args.rounds)
    print("| :--- | ---: | ---: |")
    print(f"| seed: DataLoader + PIL transforms, fp32, NCHW | {seed_med:.1f} | {min(seed_ips):.1f}-{max(seed_ips):.1f} |")
    print(f"| prunelab: uint8 tensor, batched aug, {result['prunelab_precision']}, channels_last | {ours_med:.1f} | "
          f"{min(ours_ips):.1f}-{max(ours_ips):.1f} |")
    if reference:
        print(f"| prunelab, data path of {args.against} | {result['against_median']:.1f} | "
              f"{min(ref_ips):.1f}-{max(ref_ips):.1f} |")
    if args.nchw:
        print(f"| prunelab, NCHW | {result['nchw_median']:.1f} | {min(nchw_ips):.1f}-{max(nchw_ips):.1f} |")
    print(f"\nratio prunelab / seed: {result['ratio']:.2f}x  (target >= 2.0x)")
    if reference:
        print(f"ratio current / {args.against} data path: {result['ratio_current_vs_against']:.3f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.nchw:
        print(f"ratio channels_last / NCHW (prunelab's loop): {result['ratio_channels_last_vs_nchw']:.3f}x")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
