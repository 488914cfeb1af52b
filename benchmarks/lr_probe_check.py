"""Does a short fine-tune rank the final fine-tune's learning rates as the whole fine-tune does? (RESULTS 7.37)

A study, not a product path. From a finished run's checkpoint after its last cut (the model the final fine-tune
started from), each candidate rate gets a short fine-tune of its own: `--images` training images (drawn with
`--probe-seed`), one pass, a cosine schedule over that pass from the rate to 0 (so that every candidate ends annealed,
as the whole fine-tune does), the batch-norm statistics re-estimated, then scored on the run's validation split (never
the test set). The run's recipe otherwise: its batch size, augmentation, precision, weight decay. No distillation.

    python benchmarks/lr_probe_check.py RUN_DIR --rates 0.01 0.02 0.04 --images 5000 10000 [--probe-seed 0 1] \\
        [--json OUT.json]

Prints one row per (images, probe seed): each rate's validation accuracy and the rate the probe would choose;
compare with the validation accuracies of whole runs at each rate (RESULTS 7.36).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import torch

from prunelab import modelfile
from prunelab.data import load_data
from prunelab.files import write_json
from prunelab.rundir import RunDir, open_existing
from prunelab.train import Trainer, fit, prepare_model, score, stage_bn_images


def probe(model, train, val, trainer, rate: float, images: int, seed: int, bn_images: int) -> float:
    """Validation accuracy of a copy of `model` after one cosine-annealed pass over `images` training images."""
    g = torch.Generator().manual_seed(seed)
    subset = train.subset(torch.randperm(len(train), generator=g)[:images].to(train.labels.device))
    m = copy.deepcopy(model)
    t = dataclasses.replace(trainer, lr_per_batch=True, seed=seed)
    fit(m, subset, 1, rate, trainer=t, stage=0, phase=f"probe lr {rate}", bn_images=bn_images)
    return score(m, val, trainer.normalizer, trainer.eval_batch_size)["accuracy"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--checkpoint", default="", help="checkpoint name (default: the last step's, step_NN)")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.02, 0.04])
    ap.add_argument("--images", type=int, nargs="+", default=[5000])
    ap.add_argument("--probe-seed", type=int, nargs="+", default=[0])
    ap.add_argument("--num-threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rd, cfg = open_existing(args.run)
    if not cfg.val_size:
        raise SystemExit(f"{args.run} has no validation split (--val-size); the probe scores on one")
    which = args.checkpoint or f"step_{cfg.iterative_steps:02d}"
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    data = load_data(cfg)
    trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)
    trainer.progress = False
    model, _ = modelfile.load(RunDir(args.run).model_file(which))
    prepare_model(model, trainer)
    start = score(model, data.val, trainer.normalizer, trainer.eval_batch_size)["accuracy"]
    print(f"{args.run.name} {which}: val {100 * start:.2f}% before any probe; {len(data.train)} training images")
    rows = []
    for images in args.images:
        for seed in args.probe_seed:
            t0 = time.perf_counter()
            accs = {r: probe(model, data.train, data.val, trainer, r, images, seed,
                             stage_bn_images(model, cfg.bn_reestimate_images)) for r in args.rates}
            best = max(accs, key=accs.get)
            rows.append({"images": images, "probe_seed": seed, "val": accs, "chosen": best,
                         "seconds": time.perf_counter() - t0})
            print(f"images {images:6d} seed {seed}: " + "  ".join(f"{r:g}: {100 * a:.2f}" for r, a in accs.items())
                  + f"  -> {best:g}  ({rows[-1]['seconds']:.0f} s)", flush=True)
    if args.json:
        write_json(args.json, {"run": str(args.run), "checkpoint": which, "val_before": start,
                               "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip("\t: "),
                               "rows": [{**r, "val": {str(k): v for k, v in r["val"].items()}} for r in rows]})


if __name__ == "__main__":
    main()
