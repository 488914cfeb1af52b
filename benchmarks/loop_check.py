"""Is prunelab's training loop a plain PyTorch training loop? One loop per call, from the same initial weights
(torch.manual_seed(--init-seed) before the model is built) on the same random subset of the training images:

- `--loop prunelab`: train.train_epoch, prunelab's own (batched crop and flip, its Normalizer, its Trainer);
- `--loop torchvision`: what a notebook writes: a DataLoader over per-image torchvision transforms (RandomCrop 32
  with padding 4, RandomHorizontalFlip, ToDtype, Normalize), shuffled, and a hand-written SGD step.

Both: SGD lr --lr, momentum 0.9, weight decay 5e-4, cosine over the epochs stepped per epoch (with
--warmup-epochs, prunelab's loop only: a linear warm-up first, the schedule stepped per batch), batch 128,
channels_last, bf16 autocast (or fp32 with --precision fp32); then top-1 accuracy on every 5th test image (2,000)
in fp32. The data order and crops differ between the loops (each draws its own); the weights at the start do not.
Prints each epoch's mean loss and writes a JSON of them (RESULTS 7.28).

    python benchmarks/loop_check.py --loop torchvision --json benchmarks/results/loop_check/torchvision-bf16.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision.transforms.v2 as T

from prunelab import data as D
from prunelab import models as M
from prunelab import train as TR
from prunelab.config import Config
from prunelab.files import write_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loop", choices=["prunelab", "torchvision"], required=True)
    ap.add_argument("--data-dir", default="../shared/data/cifar10-jpeg")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--images", type=int, default=10000, help="training images (a random subset, seed 123)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--warmup-epochs", type=float, default=0.0,
                    help="prunelab's loop only: linear warm-up over this many epochs, then cosine, stepped per batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data_dir)
    train, _ = D.read_image_folder_split(root / "train", D.cache_root(""))
    test, _ = D.read_image_folder_split(root / "test", D.cache_root(""))
    test = test.subset(torch.arange(0, len(test), 5))
    sub = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(123))[:args.images])
    torch.manual_seed(args.init_seed)
    model = M.resnet18_cifar(10)
    trainer = TR.Trainer.from_config(Config(precision=args.precision, progress=False), torch.device("cpu"))
    model = TR.prepare_model(model, trainer)
    rows = []
    if args.warmup_epochs and args.loop != "prunelab":
        ap.error("--warmup-epochs is for --loop prunelab")
    if args.loop == "prunelab":
        opt = TR.make_optimizer(model, trainer, args.lr)
        per_epoch = D.batches_per_epoch(len(sub), trainer.batch_size) if args.warmup_epochs else 1
        sched = TR.cosine_schedule(opt, args.epochs * per_epoch, round(args.warmup_epochs * per_epoch))
        for e in range(args.epochs):
            stats = TR.train_epoch(model, sub, opt, sched if args.warmup_epochs else None, trainer,
                                   torch.Generator().manual_seed(e))
            if not args.warmup_epochs:
                sched.step()
            rows.append({k: stats[k] for k in ("loss", "train_accuracy", "seconds")})
            print(args.loop, e + 1, rows[-1], flush=True)
    else:
        mean, std = Config().mean, Config().std
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
                        T.Normalize(mean, std)])

        class Images(torch.utils.data.Dataset):
            def __len__(self):
                return len(sub)

            def __getitem__(self, i):
                return tf(sub.images[i]), sub.labels[i]

        loader = torch.utils.data.DataLoader(Images(), batch_size=128, shuffle=True, num_workers=0,
                                             generator=torch.Generator().manual_seed(args.init_seed))
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
        for e in range(args.epochs):
            model.train()
            start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
            for x, y in loader:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    out = model(x)
                    loss = torch.nn.functional.cross_entropy(out, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                seen += len(y)
            sched.step()
            rows.append({"loss": loss_sum / seen, "train_accuracy": correct / seen,
                         "seconds": time.perf_counter() - start})
            print(args.loop, e + 1, rows[-1], flush=True)
    accuracy = TR.score(model, test, trainer.normalizer, 500)["accuracy"]
    print(f"{args.loop} ({args.precision}, init seed {args.init_seed}): test accuracy {100 * accuracy:.2f}% "
          f"on {len(test):,} images", flush=True)
    if args.json:
        result = {**vars(args), "epochs_run": rows, "test_accuracy": accuracy, "test_images": len(test)}
        write_atomic(Path(args.json), lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
