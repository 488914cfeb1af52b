"""The final fine-tune alone, several ways, from one run's last pruning step: training seconds and test accuracy.

In `quick` the final fine-tune is most of the wall time, so its recipe decides both the time and the result.
Each variant starts from the same checkpoint (the run's `checkpoints/step_NN`, the last step) and is trained by
prunelab's one training loop as the final stage trains (`train.fit` at stage n+1 on all training images: same batches
for the same seed, same optimiser and schedule) with the run's config plus the variant's overrides, then evaluated on the run's test images. One variant at a
time, in a fresh process each (never beside anything else: on 2 cores they slow each other).

    python benchmarks/archive/final_finetune.py /work/runs/quick-base \
        --variant lr0.1-e7 '{"final_finetune_epochs": 7}' --variant lr0.2-e7 '{"final_finetune_epochs": 7, "final_finetune_lr": 0.2}'

Prints a table and appends each result to the JSON file (so an interrupted list keeps what finished).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def one(run_dir: str, overrides: dict) -> dict:
    """One variant: the final stage's training (`train.fit`, as the pipeline and the scratch control train), in a
    throw-away run directory, from the run's last step checkpoint."""
    import dataclasses
    import tempfile

    from prunelab import modelfile
    from prunelab.config import config_from_dict, final_lr
    from prunelab.data import load_data
    from prunelab.files import read_jsonl
    from prunelab.measurement import machine
    from prunelab.rundir import create, open_existing
    from prunelab.train import Trainer, fit, prepare_model, resolve_device, score

    rd, cfg = open_existing(run_dir)
    n = cfg.iterative_steps
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict({**dataclasses.asdict(cfg), "progress": False, "out_dir": tmp, "name": "ft",
                                "controls": [], "seeds": [], "int8": False, **overrides})
        if cfg.distill:  # the pipeline sets the teacher up in its dense stage, which this script skips
            raise SystemExit("final_finetune: distillation variants are not supported (no dense teacher here)")
        data = load_data(cfg)
        trainer = Trainer.from_config(cfg, resolve_device(cfg.device), data.inputs)
        scratch = create(cfg)
        model = prepare_model(modelfile.load(rd.checkpoint(n, n).with_suffix(".json"))[0], trainer)
        fit(model, data.train.to(trainer.device), cfg.final_finetune_epochs, final_lr(cfg), trainer=trainer,
            stage=n + 1, phase="final fine-tune", run_dir=scratch)
        epochs = [r for r in read_jsonl(scratch.metrics) if r["event"] == "epoch"]
        accuracy = score(model, data.test.to(trainer.device), trainer.normalizer, cfg.eval_batch_size)["accuracy"]
    return {"run": str(run_dir), "overrides": overrides, "epochs": cfg.final_finetune_epochs, "lr": final_lr(cfg),
            "batch_size": cfg.batch_size, "train_seconds": sum(r["seconds"] for r in epochs),
            "images_per_s": [r["images_per_s"] for r in epochs], "test_images": len(data.test), "accuracy": accuracy,
            "machine": machine()}


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
