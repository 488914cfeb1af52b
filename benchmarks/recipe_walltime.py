"""A recipe's training-and-evaluation wall time on this machine, projected from the measured speed of every
architecture it passes through (no full run needed).

A full-data `seed` run from a trained baseline is 20 pruning steps, most of them on wide networks: hours on a
2-core CPU, and this project's only one (docs/RESULTS.md) was disturbed by other work. This script prunes a
freshly initialised copy of the model with the recipe's own pruner and schedule (per-layer pruning: the widths
depend on the ratio only, not on the weights), and at each step times a few training batches (the scratch
control's probe, `controls.seconds_per_epoch`: prunelab's loop, bf16 where the CPU has it, channels_last where
safe, as the pipeline trains) and a few evaluation batches
(fp32). The projection is what the recipe's stages spend on training and evaluating:

    dense evaluation (with a baseline) or dense epochs + evaluation
    + each step: evaluation before and after its fine-tune, its fine-tune epochs (early_images each, if set)
    + final fine-tune epochs on all training images + one evaluation

Not counted: pruning itself, checkpoints, latency measurement, ONNX export (seconds per stage). Run a recipe
whose wall time you measured beside it to see how far the projection is off, e.g.

    python benchmarks/recipe_walltime.py --preset seed --preset full --baseline

A sweep (issue 12, part 4) is one projection per MACs target, plus the scratch control at each (as many training
images as the prune-and-fine-tune phase: its final-epoch cost again, with the image budget):

    python benchmarks/recipe_walltime.py --preset full --baseline --target-macs 278.6e6 139.3e6 55.7e6 22.3e6 5.29e6 \
        --with-scratch-control

Prints a table per preset (and target) and one line each, and writes JSON (benchmarks/results/recipe_walltime.json).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunelab.config import make_config
from prunelab.controls import seconds_per_epoch
from prunelab.data import Split, batches_per_epoch
from prunelab.measurement import machine
from prunelab.models import ModelSpec, build, channels_last_unsafe_on_cpu
from prunelab.prune import build_pruner, count_macs_params, prune_step, step_ratio
from prunelab.targets import ratio_for_target
from prunelab.train import Trainer, score

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-10's splits (the presets' train_subset / test_subset apply)


def speeds(model, cfg, trainer: Trainer, train_batches: int, eval_images: int) -> tuple[float, float]:
    """(training images/s, evaluation images/s) of `model` as it stands, on random images of 32 px, in the memory
    format the pipeline would train it in (models.channels_last_unsafe_on_cpu)."""
    channels_last = cfg.channels_last and not channels_last_unsafe_on_cpu(model)
    trainer.normalizer.channels_last = channels_last
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    g = torch.Generator().manual_seed(0)
    n = (train_batches + 1) * trainer.batch_size
    split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n,), generator=g))
    rate = n / seconds_per_epoch(model, split, trainer, batches=train_batches)  # the scratch control's probe
    test = split.subset(torch.arange(min(eval_images, n)))
    score(model, test.subset(torch.arange(min(100, len(test)))), trainer.normalizer, trainer.eval_batch_size)
    start = time.perf_counter()
    score(model, test, trainer.normalizer, trainer.eval_batch_size)
    return rate, len(test) / (time.perf_counter() - start)


def project(preset: str, baseline: bool, train_batches: int, eval_images: int, target_macs: float = 0,
            scratch_control: bool = False) -> dict:
    cfg = make_config(preset, {"progress": False})
    trainer = Trainer.from_config(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = build(ModelSpec(cfg.model, 10))
    ratio = ratio_for_target(model, cfg, target_macs=target_macs) if target_macs else None
    pruner = build_pruner(model, cfg, pruning_ratio=ratio)
    train_images, test_images = cfg.train_subset or TRAIN_IMAGES, cfg.test_subset or TEST_IMAGES
    early = cfg.early_images or train_images
    rows = []
    for k in range(cfg.iterative_steps + 1):
        if k:
            prune_step(pruner, model)
        train_rate, eval_rate = speeds(model, cfg, trainer, train_batches, eval_images)
        macs, params = count_macs_params(model)
        eval_s = test_images / eval_rate
        if k == 0:
            epochs, images = (0, 0) if baseline else (cfg.epochs, early)
            evals = 1
        else:
            epochs, images, evals = cfg.finetune_epochs_per_step, early, 2
        train_s = epochs * batches_per_epoch(images, cfg.batch_size) * cfg.batch_size / train_rate
        rows.append({"stage": f"step {k}" if k else "dense", "ratio": step_ratio(pruner, k), "macs": macs,
                     "params": params, "train_images_per_s": train_rate, "eval_images_per_s": eval_rate,
                     "train_s": train_s, "eval_s": evals * eval_s})
        print(f"  {rows[-1]['stage']}: ratio {rows[-1]['ratio']:.3f}, {macs / 1e6:.1f} M MACs, train {train_rate:.0f} "
              f"images/s, eval {eval_rate:.0f} images/s", flush=True)
    last = rows[-1]
    final_train = cfg.final_finetune_epochs * train_images / last["train_images_per_s"]
    rows.append({"stage": "final", "ratio": last["ratio"], "macs": last["macs"], "params": last["params"],
                 "train_images_per_s": last["train_images_per_s"], "eval_images_per_s": last["eval_images_per_s"],
                 "train_s": final_train, "eval_s": test_images / last["eval_images_per_s"]})
    if scratch_control:  # the phase's training images again, on the final architecture, and one evaluation
        phase_images = sum(r["train_s"] * r["train_images_per_s"] for r in rows[1:])
        rows.append({**rows[-1], "stage": "scratch control", "train_s": phase_images / last["train_images_per_s"]})
    total = sum(r["train_s"] + r["eval_s"] for r in rows)
    return {"preset": preset, "target_macs": target_macs, "baseline": baseline, "train_batches": train_batches,
            "eval_images": eval_images, "test_images": test_images, "stages": rows, "projected_s": total,
            "machine": machine()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", required=True, help="a preset to project (repeatable)")
    p.add_argument("--baseline", action="store_true", help="the run starts from a trained --baseline (no dense epochs)")
    p.add_argument("--train-batches", type=int, default=6, help="timed training batches per architecture")
    p.add_argument("--eval-images", type=int, default=1000, help="timed evaluation images per architecture")
    p.add_argument("--target-macs", type=float, nargs="+", default=[0.0],
                   help="project the preset at each of these MACs targets (a sweep; 0 = the preset's ratio)")
    p.add_argument("--with-scratch-control", action="store_true", help="add the scratch control of each run")
    p.add_argument("--json", default="benchmarks/results/recipe_walltime.json")
    args = p.parse_args()
    def name(preset: str, target: float) -> str:
        return f"{preset}{f' at {target:.4g} MACs' if target else ''}"

    out = []
    for preset in args.preset:
        for target in args.target_macs:
            print(f"{name(preset, target)}:", flush=True)
            out.append(project(preset, args.baseline, args.train_batches, args.eval_images, target,
                               args.with_scratch_control))
    for r in out:
        print(f"\n{name(r['preset'], r['target_macs'])}{' from a baseline' if r['baseline'] else ''}: ({r['machine']['processor']}, "
              f"{r['machine']['torch_threads']} threads)\n")
        print("| stage | ratio | MACs | train images/s | eval images/s | training (s) | evaluation (s) |")
        print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in r["stages"]:
            print(f"| {s['stage']} | {s['ratio']:.3f} | {s['macs'] / 1e6:.1f} M | {s['train_images_per_s']:.0f} | "
                  f"{s['eval_images_per_s']:.0f} | {s['train_s']:.0f} | {s['eval_s']:.0f} |")
    print()
    for r in out:
        print(f"{name(r['preset'], r['target_macs'])}: projected {r['projected_s'] / 60:.1f} min of training and evaluation "
              f"(one timing of {r['train_batches']} batches per architecture)")
    if len(out) > 1:
        print(f"all together: {sum(r['projected_s'] for r in out) / 3600:.1f} h")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
