"""What the augmented batch-norm re-estimate (commit 929185f) changes in runs made before it: a finished run's final
model, and each finished control's, with the statistics re-estimated as the pipeline now does at the end of the last
training stage (train.reestimate_batchnorm on augmented batches: the same number of images of the same split, the
same seed), scored on the run's test images beside the accuracy its results recorded.

The re-estimate changes only batch-norm buffers, which a training step in train mode does not read (it normalises by
the batch's own statistics), and the statistics re-estimated right after a cut are overwritten by the fine-tune's
running averages. So the weights of a run without a width search are those the current code trains, and the score
here is what the current code would have recorded (up to floating-point noise). Not for runs with
`--allocation search`: their proxy scored candidates on re-estimated statistics, so the current code may choose
other widths.

    python benchmarks/bn_rescore.py RUN_DIR [RUN_DIR ...] --json benchmarks/results/bn_rescore.json

With `--records DEST` (a folder of `benchmarks/keep_records.py` copies) the rescored accuracy also replaces the recorded
one in DEST/<run name>/results.json (the final model's) and DEST/<run name>/controls/<kind>/results.json, beside a
"rescored" entry that keeps the recorded number, so that `prunelab collect DEST` draws what the current code scores.
`--models` picks which of a run's models (pruned, scratch, scratch-long) to rescore: those made before the fix.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from prunelab import modelfile
from prunelab.data import load_data
from prunelab.files import read_jsonl, write_json
from prunelab.measurement import machine
from prunelab.rundir import open_existing
from prunelab.train import Trainer, prepare_model, reestimate_batchnorm, score, stage_bn_images


def last_stage(metrics: Path) -> tuple[int, int]:
    """(stage, images re-estimated) of the last epoch that ended with a re-estimate."""
    rows = [r for r in read_jsonl(metrics) if r.get("event") == "epoch" and r.get("bn_reestimated")]
    if not rows:
        raise SystemExit(f"{metrics}: no epoch ended with a batch-norm re-estimate; nothing to rescore")
    return rows[-1]["stage"], rows[-1]["bn_reestimated"]


def update_record(record_dir: Path, model: str, recorded: float, rescored: float) -> None:
    """Put the rescored accuracy into the kept results of `model` ("pruned" or "control KIND"), keeping the old one."""
    path = record_dir / ("results.json" if model == "pruned" else f"controls/{model.split()[1]}/results.json")
    results = json.loads(path.read_text())
    entry = results["final"] if model == "pruned" else results
    if "rescored" in entry:
        recorded = entry["rescored"]["recorded"]  # rescored before: keep the number the run itself wrote
    entry["accuracy"] = rescored
    entry["rescored"] = {"recorded": recorded, "by": "benchmarks/bn_rescore.py (augmented batch-norm re-estimate)"}
    write_json(path, results)
    print(f"  {path}: accuracy {recorded:.4f} -> {rescored:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--json", default="benchmarks/results/bn_rescore.json")
    ap.add_argument("--models", nargs="+", choices=["pruned", "scratch", "scratch-long"],
                    default=["pruned", "scratch", "scratch-long"], help="which of each run's models to rescore")
    ap.add_argument("--records", help="a keep_records.py folder whose copies of these runs' results take the rescored accuracy")
    args = ap.parse_args()
    if args.records:  # check before the long work: every record to update exists
        for d in args.run_dirs:
            if not (Path(args.records) / Path(d).name / "results.json").is_file():
                raise SystemExit(f"{args.records}/{Path(d).name}/results.json missing; keep the run's records first "
                                 f"(python benchmarks/keep_records.py {args.records} {d})")
    rows = []
    for d in args.run_dirs:
        rd, cfg = open_existing(d)
        if cfg.allocation == "search":
            raise SystemExit(f"{d}: a width search's choice depends on the re-estimate; rerun it instead")
        data = load_data(cfg)
        trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)
        train = data.train  # the final fine-tune's and the controls' split (the validation split already carved off)
        recorded = json.loads(rd.results.read_text())
        models = []
        if "pruned" in args.models:
            models.append(("pruned", rd.model_file("final"), rd.metrics, recorded["final"]["accuracy"]))
        for kind in ("scratch", "scratch-long"):
            crd = rd.control(kind)
            if kind in args.models and crd.results.is_file():
                models.append((f"control {kind}", crd.model.with_suffix(".json"), crd.metrics,
                               json.loads(crd.results.read_text())["accuracy"]))
        for name, path, metrics, before in models:
            stage, images = last_stage(metrics)
            model = prepare_model(modelfile.load(path)[0], trainer)
            assert images == stage_bn_images(model, cfg.bn_reestimate_images)
            reestimate_batchnorm(model, train, trainer, images, seed=trainer.seed * 1_000_003 + stage * 1000 + 999)
            after = score(model, data.test, trainer.normalizer, cfg.eval_batch_size)["accuracy"]
            rows.append({"run": str(d), "model": name, "stage": stage, "bn_images": images, "recorded": before,
                         "augmented_reestimate": after})
            print(f"{d}  {name}: recorded {before:.4f}, augmented re-estimate {after:.4f} ({after - before:+.4f})",
                  flush=True)
            if args.records:
                update_record(Path(args.records) / Path(d).name, name, before, after)
    write_json(args.json, {"rows": rows, "machine": machine()})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
