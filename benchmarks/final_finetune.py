"""The final fine-tune alone, several ways, from one run's last pruning step: training seconds and test accuracy.

In `quick` the final fine-tune is most of the wall time, so its recipe decides both the time and the result.
Each variant starts from the same checkpoint (the run's `checkpoints/step_NN`, the last step), trains as the
pipeline's final stage does (prunelab.train: same batches for the same seed, cosine stepped per batch) with
the run's config plus the variant's overrides, and is evaluated on the run's test images. One variant at a
time, in a fresh process each (never beside anything else: on 2 cores they slow each other).

    python benchmarks/final_finetune.py /work/runs/quick-base \
        --variant lr0.1-e7 '{"final_finetune_epochs": 7}' --variant lr0.2-e7 '{"final_finetune_epochs": 7, "final_finetune_lr": 0.2}'

Prints a table and appends each result to the JSON file (so an interrupted list keeps what finished).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def one(run_dir: str, overrides: dict) -> dict:
    import dataclasses

    import torch

    from prunelab import modelfile
    from prunelab.config import config_from_dict
    from prunelab.data import batches_per_epoch, load_data
    from prunelab.measurement import machine
    from prunelab.rundir import open_existing
    from prunelab.train import Trainer, cosine_schedule, evaluate, make_optimizer, train_epoch

    rd, cfg = open_existing(run_dir)
    cfg = config_from_dict({**dataclasses.asdict(cfg), "progress": False, **overrides})
    n = cfg.iterative_steps
    data = load_data(cfg)
    trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)
    model, _ = modelfile.load(rd.checkpoint(n, n).with_suffix(".json"))
    trainer.normalizer.channels_last = False  # as the pipeline trains a pruned ResNet on the CPU (models.py)
    lr = cfg.final_finetune_lr or cfg.finetune_lr
    optimizer = make_optimizer(model, cfg, lr)
    steps = batches_per_epoch(len(data.train), cfg.batch_size)
    scheduler = cosine_schedule(optimizer, cfg.final_finetune_epochs * steps)
    start = time.perf_counter()
    rates = []
    for epoch in range(1, cfg.final_finetune_epochs + 1):  # the pipeline's generator for stage n + 1
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + (n + 1) * 1000 + epoch)
        stats = train_epoch(model, data.train, optimizer, scheduler, trainer, g)
        rates.append(stats["images_per_s"])
        print(f"  epoch {epoch}: loss {stats['loss']:.3f}, {stats['images_per_s']:.0f} images/s", flush=True)
    seconds = time.perf_counter() - start
    acc = evaluate(model, data.test, trainer.normalizer, cfg.eval_batch_size)["accuracy"]
    return {"run": str(run_dir), "overrides": overrides, "epochs": cfg.final_finetune_epochs, "lr": lr,
            "batch_size": cfg.batch_size, "train_seconds": seconds, "images_per_s": rates,
            "test_images": len(data.test), "accuracy": acc, "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True,
                    help="a name and a JSON object of config overrides")
    ap.add_argument("--json", default="benchmarks/results/final_finetune.json")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.run_dir, json.loads(args.one))), flush=True)
        return
    out = Path(args.json)
    rows = json.loads(out.read_text()) if out.is_file() else []
    for name, overrides in args.variant:
        print(f"{name}: {overrides}", flush=True)
        p = subprocess.run([sys.executable, __file__, args.run_dir, "--variant", name, overrides, "--one", overrides],
                           capture_output=True, text=True)
        lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            sys.exit(f"final_finetune: {name} failed:\n{p.stderr[-2000:]}")
        row = {"variant": name, **json.loads(lines[0][len("RESULT "):])}
        rows.append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"  {100 * row['accuracy']:.2f}% in {row['train_seconds']:.0f} s", flush=True)
    print("\n| variant | epochs | lr | batch | training (s) | images/s (min-max) | test accuracy |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['variant']} | {r['epochs']} | {r['lr']:g} | {r['batch_size']} | {r['train_seconds']:.0f} | "
              f"{min(r['images_per_s']):.0f}-{max(r['images_per_s']):.0f} | {100 * r['accuracy']:.2f}% |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
