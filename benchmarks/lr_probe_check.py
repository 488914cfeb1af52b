"""Does a short fine-tune rank the final fine-tune's learning rates as the whole fine-tune does? (RESULTS 7.37)

A study, not a product path. From a finished run's checkpoint after its last cut (the model the final fine-tune
started from), each candidate rate gets the short fine-tune of `--lr-probe` (train.probe_rates): one pass over
`--images` training images drawn with `--probe-seed`, cosine from the rate to 0, batch-norm statistics re-estimated,
scored on the run's validation split (never the test set); the run's recipe otherwise, without distillation.

    python benchmarks/lr_probe_check.py RUN_DIR --rates 0.01 0.02 0.04 --images 5000 10000 [--probe-seed 0 1] \\
        [--json OUT.json]

Prints one row per (images, probe seed): each rate's validation accuracy and the rate the probe would choose;
compare with the validation accuracies of whole runs at each rate (RESULTS 7.36).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from prunelab import modelfile
from prunelab.data import load_data
from prunelab.files import write_json
from prunelab.rundir import RunDir, open_existing
from prunelab.train import Trainer, prepare_model, probe_rates, score, stage_bn_images


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
    _, cfg = open_existing(args.run)
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
            accs = dict(zip(args.rates, probe_rates(model, data.train, data.val, args.rates, images, trainer=trainer,
                                                    seed=seed, bn_images=stage_bn_images(model, cfg.bn_reestimate_images))))
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
