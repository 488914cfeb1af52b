"""RESULTS 7.17's diagnostic: a finished run's final model with its batch-norm statistics re-estimated on clean
training images (what `train.reestimate_batchnorm` did before commit 929185f) and on augmented ones (what it does
now), scored on the run's test images. A diagnostic on the test set, not a selection.

    python benchmarks/bn_clean_vs_augmented.py RUN_DIR --images 2560 10000 --seed 1 \
        --json benchmarks/results/bn_clean_vs_augmented.json
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn as nn

from prunelab import modelfile
from prunelab.data import load_data
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.rundir import open_existing
from prunelab.train import Trainer, prepare_model, reestimate_batchnorm, score


def reestimate_clean(model: nn.Module, split, trainer: Trainer, images: int, seed: int) -> int:
    """The re-estimate as it was before 929185f: reestimate_batchnorm's images, with the augmentation off."""
    plain = dataclasses.replace(trainer, augmentation="none", flip=False, cutout_px=0)
    return reestimate_batchnorm(model, split, plain, images, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--images", type=int, nargs="+", default=[2560, 10000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default="benchmarks/results/bn_clean_vs_augmented.json")
    args = ap.parse_args()
    rd, cfg = open_existing(args.run_dir)
    data = load_data(cfg)
    trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)

    def final_model() -> nn.Module:
        return prepare_model(modelfile.load(rd.model_file("final"))[0], trainer)

    def test_accuracy(model: nn.Module) -> float:
        return score(model, data.test, trainer.normalizer, cfg.eval_batch_size)["accuracy"]

    rows = [{"statistics": "as saved", "images": None, "accuracy": test_accuracy(final_model())}]
    for n in args.images:
        for kind, reestimate in (("clean", reestimate_clean), ("augmented", reestimate_batchnorm)):
            model = final_model()
            reestimate(model, data.train, trainer, n, args.seed)
            rows.append({"statistics": kind, "images": n, "accuracy": test_accuracy(model)})
    print("\n| batch-norm statistics | images | test accuracy |\n| :--- | ---: | ---: |")
    for r in rows:
        print(f"| {r['statistics']} | {r['images'] or ''} | {100 * r['accuracy']:.2f}% |")
    write_json(args.json, {"run": args.run_dir, "seed": args.seed, "test_images": len(data.test), "rows": rows,
                           "machine": machine()})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
