"""What fresh batch-norm statistics do to a model right after a cut: one-shot uniform pruning of a trained model at
several channel ratios, scored with the statistics the dense model left (stale) and after re-estimating them on
training images (`train.reestimate_batchnorm`, what `--bn-reestimate-images` does after every pruning step and
what the width search's proxy does to every candidate).

    python benchmarks/bn_reestimate.py --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors \
        --data-dir ../shared/data/cifar10-jpeg --ratios 0.3 0.5 0.7 0.9 --test-images 2000 --images 2560

Prints a table and writes JSON (benchmarks/results/bn_reestimate.json). The test images give the reported numbers
only; the statistics come from training images.
"""
from __future__ import annotations

import argparse
import time

import torch

from prunelab.config import make_config
from prunelab.data import load_data
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.modelfile import load_dense_baseline
from prunelab.prune import count_macs_params, prune_once
from prunelab.train import Trainer, prepare_model, reestimate_batchnorm, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="a trained dense model (.safetensors)")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--images", type=int, nargs="+", default=[2560], help="training images that re-estimate")
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/bn_reestimate.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = make_config("seed", {"data_dir": args.data_dir, "model": args.model, "test_subset": args.test_images,
                               "progress": False})
    data = load_data(cfg)
    trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)
    dense = load_dense_baseline(args.baseline, args.model, len(data.classes))
    rows = [{"ratio": 0.0, "macs": count_macs_params(dense)[0],
             "stale": score(prepare_model(dense, trainer), data.test, trainer.normalizer, 500)["accuracy"]}]
    for ratio in args.ratios:
        pruned = prune_once(dense, cfg, ratio, num_classes=len(data.classes))
        row = {"ratio": ratio, "macs": count_macs_params(pruned)[0],
               "stale": score(prepare_model(pruned, trainer), data.test, trainer.normalizer, 500)["accuracy"]}
        for n in args.images:
            fresh = prune_once(dense, cfg, ratio, num_classes=len(data.classes))
            fresh = prepare_model(fresh, trainer)
            start = time.perf_counter()
            reestimate_batchnorm(fresh, data.train, trainer, n, seed=0)
            row[f"fresh_{n}"] = score(fresh, data.test, trainer.normalizer, 500)["accuracy"]
            row[f"seconds_{n}"] = time.perf_counter() - start
        rows.append(row)
        print(row, flush=True)
    print("\n| channel ratio | MACs | stale statistics | " + " | ".join(f"fresh, {n:,} images (s)" for n in args.images)
          + " |")
    print("| ---: | ---: | ---: |" + " ---: |" * len(args.images))
    for r in rows:
        print(f"| {r['ratio']:.1f} | {r['macs'] / 1e6:.1f} M | {100 * r['stale']:.2f}% | "
              + " | ".join(f"{100 * r[f'fresh_{n}']:.2f}% ({r[f'seconds_{n}']:.1f})" if f"fresh_{n}" in r else ""
                           for n in args.images) + " |")
    write_json(args.json, {"baseline": args.baseline, "test_images": len(data.test), "rows": rows,
                           "machine": machine()})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
