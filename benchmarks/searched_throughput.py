"""Training speed of a width search's chosen network against uniform allocation's, side by side in one process,
or of the final networks of several runs.

A run with `--allocation search` records both width vectors (search.json: candidate 0 is uniform allocation). Given
that one run, this script cuts each from the run's dense model, one-shot; given several runs, it takes each run's
final model. It times training epochs on the (first) run's images in alternating rounds (so drift of a shared
machine hits all alike), in the layout the pipeline would train each in.

    python benchmarks/searched_throughput.py /work/runs/full-search20k-s0 --images 5120 --rounds 3
    python benchmarks/searched_throughput.py /work/runs/full-u-s0 /work/runs/full-u-r8-fill-s0 \
        --json benchmarks/results/fill_throughput.json

Prints a table and writes JSON (benchmarks/results/searched_throughput.json).
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from prunelab import modelfile
from prunelab.data import load_data
from prunelab.files import write_json
from prunelab.measurement import machine
from prunelab.prune import count_macs_params, prune_once
from prunelab.rundir import open_existing
from prunelab.train import Trainer, make_optimizer, prepare_model, train_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", help="one run with a width search, or several runs (their final models)")
    ap.add_argument("--images", type=int, default=5120, help="training images per timed epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/searched_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rd, cfg = open_existing(args.run_dirs[0])
    data = load_data(cfg)
    split = data.train.subset(torch.arange(min(args.images, len(data.train))))
    if len(args.run_dirs) == 1:
        search = json.loads(rd.search.read_text())
        dense = modelfile.load(rd.model_file("dense"))[0]
        models = {name: prune_once(dense, cfg, 0.0, image_size=data.inputs.image_size, num_classes=len(data.classes),
                                   group_ratios=ratios)
                  for name, ratios in (("uniform (candidate 0)", search["candidates"][0]["group_ratios"]),
                                       (f"searched (candidate {search['index']})", search["group_ratios"]))}
    else:
        models = {str(d): modelfile.load(open_existing(d)[0].model_file("final"))[0] for d in args.run_dirs}
    rows = {}
    for name, pruned in models.items():
        trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)
        model = prepare_model(pruned.train(), trainer)
        macs, params = count_macs_params(model, data.inputs.image_size)
        rows[name] = {"model": model, "trainer": trainer, "opt": make_optimizer(model, trainer, 0.01), "macs": macs,
                      "params": params, "channels_last": trainer.normalizer.channels_last, "images_per_s": []}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, row in rows.items():
            stats = train_epoch(row["model"], split, row["opt"], None, row["trainer"], torch.Generator().manual_seed(r),
                                desc=name)
            if r:
                row["images_per_s"].append(stats["images_per_s"])
    print("| network | MACs | params | layout | training images/s (median of rounds) | rounds |")
    print("| :--- | ---: | ---: | :--- | ---: | :--- |")
    out = []
    for name, row in rows.items():
        median = statistics.median(row["images_per_s"])
        print(f"| {name} | {row['macs'] / 1e6:.2f} M | {row['params']:,} | "
              f"{'channels_last' if row['channels_last'] else 'NCHW'} | {median:.0f} | "
              + ", ".join(f"{v:.0f}" for v in row["images_per_s"]) + " |")
        out.append({"network": name, **{k: row[k] for k in ("macs", "params", "channels_last", "images_per_s")},
                    "median_images_per_s": median})
    write_json(args.json, {"run_dirs": [str(d) for d in args.run_dirs], "images": len(split), "rounds": args.rounds,
                           "networks": out, "machine": machine()})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
