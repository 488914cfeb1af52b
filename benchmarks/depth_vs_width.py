"""Depth or width: from a trained dense model, remove residual blocks, or thin every layer to the same MACs?

For each set of blocks (`--drop-sets`), two cuts of the dense model: the blocks removed (`--drop-blocks`, what
models.drop_blocks does), and every layer thinned to the same MACs (uniform L2 pruning, the one-shot cut of
`--target-macs`). Both get fresh batch-norm statistics on training images (what `--bn-reestimate-images` does after
a cut), are scored right after the cut on a validation split carved from the training images (blocks chosen from this
table are chosen without test images; but a dense model trained on all the training images has seen these, so they
flatter it) and on the test set (reported, chosen from by no one), and are timed in PyTorch (eager, fp32, NCHW) at batch 1 and 128 on this
CPU, in alternating rounds in one process (so drift of a shared machine hits both).

    python benchmarks/depth_vs_width.py --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors \\
        --data-dir ../shared/data/cifar10-jpeg

Prints a table and writes JSON (benchmarks/results/depth_vs_width.json).
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from prunelab import modelfile
from prunelab.config import make_config
from prunelab.data import load_data
from prunelab.files import write_json
from prunelab.measurement import latency_ms, machine
from prunelab.models import check_drop_blocks, drop_blocks
from prunelab.prune import count_macs_params, prune_once
from prunelab.targets import ratio_for_target
from prunelab.train import Trainer, prepare_model, reestimate_batchnorm, score

DROP_SETS = ["layer4.1", "layer3.1", "layer2.1", "layer1.1", "layer1.0", "layer3.1,layer4.1",
             "layer1.1,layer2.1,layer3.1,layer4.1", "layer1.0,layer1.1,layer2.1,layer3.1,layer4.1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the trained dense model (.safetensors)")
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--data-dir", default="../shared/data/cifar10-jpeg")
    ap.add_argument("--drop-sets", nargs="+", default=DROP_SETS, metavar="A,B", help="comma-separated block names")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--bn-images", type=int, default=2560)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (median reported)")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="least time per latency measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/depth_vs_width.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = make_config("full", {"data_dir": args.data_dir, "val_size": args.val_size, "model": args.model,
                                 "progress": False, "channels_last": False})
    data = load_data(cfg)
    size, classes = data.inputs.image_size, len(data.classes)
    trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)
    dense = modelfile.load_dense_baseline(args.baseline, args.model, classes)
    sets = [s.split(",") for s in args.drop_sets]
    for blocks in sets:
        check_drop_blocks(dense, blocks, size)

    def fresh(model) -> torch.nn.Module:
        model = prepare_model(model, trainer)
        reestimate_batchnorm(model, data.train, trainer, args.bn_images, seed=0)
        return model.eval()

    dense_macs, dense_params = count_macs_params(dense, size)
    models = {"dense": {"blocks": [], "cut": "none", "model": prepare_model(copy.deepcopy(dense), trainer).eval()}}
    for blocks in sets:
        shallow = drop_blocks(copy.deepcopy(dense), blocks)
        macs, _ = count_macs_params(shallow, size)
        ratio = ratio_for_target(dense, cfg, target_macs=macs, image_size=size, num_classes=classes)
        thin = prune_once(dense, cfg, ratio, image_size=size, num_classes=classes)
        key = " ".join(blocks)
        models[f"drop {key}"] = {"blocks": blocks, "cut": "depth", "model": fresh(shallow)}
        models[f"thin to the MACs of drop {key}"] = {"blocks": blocks, "cut": "width", "ratio": ratio,
                                                       "model": fresh(thin)}
    for name, row in models.items():
        row["macs"], row["params"] = count_macs_params(row["model"], size)
        row["val_accuracy"] = score(row["model"], data.val, trainer.normalizer)["accuracy"]
        row["test_accuracy"] = score(row["model"], data.test, trainer.normalizer)["accuracy"]
        row["latency_ms"] = {1: [], 128: []}
        print(f"{name}: {row['macs'] / 1e6:.1f} M MACs, {row['params'] / 1e6:.2f} M params, val acc "
              f"{100 * row['val_accuracy']:.2f}%, test acc {100 * row['test_accuracy']:.2f}%", flush=True)
    with torch.no_grad():
        for r in range(args.rounds):
            for row in models.values():
                for batch in (1, 128):
                    row["latency_ms"][batch].append(latency_ms(row["model"], batch, torch.device("cpu"), warmup=2,
                                                               min_reps=3, min_seconds=args.min_seconds,
                                                               channels_last=False, input_size=size)["median_ms"])
            print(f"timing round {r + 1} of {args.rounds} done", flush=True)
    print("\n| model | MACs | params | val acc | test acc | ms, batch 1 | ms, batch 128 |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: |")
    out = []
    for name, row in models.items():
        med = {b: statistics.median(v) for b, v in row["latency_ms"].items()}
        print(f"| {name} | {row['macs'] / 1e6:.1f} M | {row['params'] / 1e6:.2f} M | {100 * row['val_accuracy']:.2f}% | "
              f"{100 * row['test_accuracy']:.2f}% | {med[1]:.2f} | {med[128]:.1f} |")
        out.append({"name": name, **{k: v for k, v in row.items() if k != "model"}, "median_ms": med})
    write_json(args.json, {"benchmark": "depth_vs_width", "command": vars(args), "dense_macs": dense_macs,
                           "dense_params": dense_params, "rows": out, "machine": machine()})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
