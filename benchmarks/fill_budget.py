"""A size budget with and without `fill_budget`: uniform pruning at the smallest ratio that meets the budget, then
the groups widened into what rounding left idle, for each round_to; MACs, parameters, widths, and the latency of
all four side by side (alternating rounds, each timing in a fresh session; ratios to the first model per round).

    python benchmarks/fill_budget.py --round-to 2 8 --rounds 5 --json benchmarks/results/fill_budget.json

With `--train-images N`, each model's training speed instead (and the dense model's): an epoch of N synthetic
images per model per round, in the layout and precision the pipeline would train it in (Trainer, prepare_model),
images/s and the ratio to the dense model:

    python benchmarks/fill_budget.py --target-macs 2.786e8 --target-params 0 --round-to 2 8 16 \
        --train-images 1280 --rounds 4 --json benchmarks/results/round_to-training.json

Latency does not depend on the weights, so one-shot-pruned copies of a randomly initialised ResNet-18 have the
final models' architecture and speed. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from prunelab.config import make_config
from prunelab.data import make_synthetic
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.models import build_model
from prunelab.prune import count_macs_params, group_roots, layer_widths, prune_once
from prunelab.runtimes import latency
from prunelab.targets import fill_budget, ratio_for_target
from prunelab.train import Trainer, make_optimizer, prepare_model, train_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-macs", type=float, default=5.29e6)
    ap.add_argument("--target-params", type=float, default=105428)
    ap.add_argument("--round-to", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=0,
                    help="time training (images/s on this many synthetic images per round) instead of latency")
    ap.add_argument("--json", default="benchmarks/results/fill_budget.json")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    torch.set_num_threads(args.threads)
    dense = build_model("resnet18_cifar", 10)
    models, rows = {}, []
    for r in args.round_to:
        cfg = make_config("full", {"round_to": r})
        ratio = ratio_for_target(dense, cfg, args.target_macs, args.target_params)
        filled, _ = fill_budget(dense, cfg, ratio, args.target_macs, args.target_params)
        roots = group_roots(dense, cfg, 32, 10)
        for name, kwargs in ((f"round_to {r}", {"ratio": ratio}), (f"round_to {r}, filled", {"ratio": 0.0, "group_ratios": filled})):
            model = prune_once(dense, cfg, image_size=32, num_classes=10, **kwargs).eval()
            macs, params = count_macs_params(model, 32)
            widths = layer_widths(model)
            models[name] = model
            rows.append({"model": name, "round_to": r, "ratio": ratio, "macs": macs, "params": params,
                         "group_widths": {g: widths[g] for g in roots if g in widths}, "ms": []})
    if args.train_images:
        return train_speed(dense, models, rows, args)
    for _ in range(args.rounds):
        for row in rows:
            with tempfile.TemporaryDirectory() as tmp:
                row["ms"].append(latency(models[row["model"]], args.runtime, 32, args.batch_size, tmp))
    first = rows[0]["ms"]
    print(f"| model | MACs | params | ms ({args.runtime}, batch {args.batch_size}), median | vs {rows[0]['model']} |")
    print("| :--- | ---: | ---: | ---: | ---: |")
    for row in rows:
        row["median_ms"] = statistics.median(row["ms"])
        row["ratio_to_first"] = statistics.median(a / b for a, b in zip(row["ms"], first))
        print(f"| {row['model']} | {row['macs'] / 1e6:.2f} M | {row['params']:,} | {row['median_ms']:.3f} | "
              f"{row['ratio_to_first']:.2f}x |")
    write_json(args.json, {"args": vars(args), "machine": machine(), "rows": rows})
    print(f"wrote {args.json}")


def train_speed(dense, models: dict, rows: list, args) -> None:
    """Training images/s of the dense model and each pruned one, alternating per round (round 0 warms up)."""
    cfg = make_config("full", {"progress": False})
    split = make_synthetic(args.train_images, 1)[0]
    macs, params = count_macs_params(dense, 32)
    rows = [{"model": "dense", "macs": macs, "params": params}, *rows]
    models = {"dense": dense, **models}
    for row in rows:
        trainer = Trainer.from_config(cfg, torch.device("cpu"))
        model = prepare_model(models[row["model"]].train(), trainer)
        row.pop("ms", None)
        row.update(trainer=trainer, net=model, opt=make_optimizer(model, trainer, 0.01),
                   channels_last=trainer.normalizer.channels_last, images_per_s=[])
    for r in range(args.rounds + 1):
        for row in rows:
            stats = train_epoch(row["net"], split, row["opt"], None, row["trainer"], torch.Generator().manual_seed(r),
                                desc=row["model"])
            if r:
                row["images_per_s"].append(stats["images_per_s"])
    precision = str(rows[0]["trainer"].amp_dtype or "fp32").replace("torch.", "")
    print(f"| model | MACs | params | layout | training images/s ({precision}), median | vs dense |")
    print("| :--- | ---: | ---: | :--- | ---: | ---: |")
    for row in rows:
        for k in ("trainer", "net", "opt"):
            row.pop(k)
        row["median_images_per_s"] = statistics.median(row["images_per_s"])
        row["ratio_to_dense"] = statistics.median(a / b for a, b in zip(row["images_per_s"], rows[0]["images_per_s"]))
        print(f"| {row['model']} | {row['macs'] / 1e6:.2f} M | {row['params']:,} | "
              f"{'channels_last' if row['channels_last'] else 'NCHW'} | {row['median_images_per_s']:.0f} | "
              f"{row['ratio_to_dense']:.2f}x |")
    write_json(args.json, {"args": vars(args), "machine": machine(), "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
