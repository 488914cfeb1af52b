"""Does any way of spreading the channels over ResNet-18's stages beat uniform allocation at the seed's size?

The width search (`--allocation search`) draws each group's multiplier independently and ranks candidates after a
fraction of an epoch; it tied uniform allocation after 40 epochs (RESULTS 7.2). This script asks the question under
the search: are there better architectures in the family at all? It builds structured candidates (one multiplier per
stage, or one for the residual streams and one for the block interiors), scales each by the search's own bisection
until it meets both limits (MACs and params), re-initialises it (at this size the scratch control ties the pruned
model, RESULTS 3.3 and 7.2, so what is compared is the architecture) and trains it for the same epochs on the same
images. Candidates are ranked on a validation split carved from the training images; the test set gives the reported
number only.

    python benchmarks/allocation_study.py --data-dir ../shared/data/cifar10-jpeg --epochs 15 --seeds 0
    python benchmarks/allocation_study.py ... --plan        # widths, MACs and params of each candidate, no training
    python benchmarks/allocation_study.py ... --probe 40    # 40 random stage vectors: which land near both limits
    python benchmarks/allocation_study.py --curves OUTPUT.log  # validation curves and rank correlations, no training

A candidate's multiplier m acts as the search's do (targets.candidate_ratios): a group keeps (1 - u) ** m of its
channels, u set by bisection; m < 1 spares the group, m > 1 cuts it harder. Resumable: a finished (candidate, seed)
in the JSON is not trained again. Prints a table and writes JSON (benchmarks/results/allocation_study.json).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import statistics
import time
from pathlib import Path

import torch

from prunelab.config import make_config
from prunelab.controls import reinitialise
from prunelab.data import load_data
from prunelab.files import write_json
from prunelab.measurement import latency_ms, machine
from prunelab.models import build_model, drop_blocks
from prunelab.prune import count_macs_params, group_roots, layer_widths
from prunelab.targets import scale_candidate
from prunelab.train import Trainer, fit, prepare_model, score


def stage_of(group: str) -> int:
    """ResNet-18's stage of a group root: conv1 (the stem, which sets layer1's residual stream) is stage 1."""
    match = re.match(r"layer(\d)", group)
    return int(match.group(1)) if match else 1


def is_stream(group: str) -> bool:
    """Whether a group root is a residual stream (the stem or a downsample) rather than a block's interior."""
    return group == "conv1" or "downsample" in group


def by_stage(*m: float):
    return lambda g: m[stage_of(g) - 1]


# name -> multiplier of a group root; every candidate is scaled to the same two limits afterwards
CANDIDATES = {
    "uniform": lambda g: 1.0,
    "wide-early": by_stage(0.7, 0.85, 1.0, 1.2),
    "wide-late": by_stage(1.2, 1.0, 0.9, 0.85),
    "wide-middle": by_stage(1.1, 0.85, 0.85, 1.2),
    "narrow-last-stage": by_stage(0.9, 0.9, 0.9, 1.3),
    "wide-streams": lambda g: 0.8 if is_stream(g) else 1.2,
    "wide-interiors": lambda g: 1.2 if is_stream(g) else 0.8,
    # two stage vectors of `--probe 40` that stay near both limits, as uniform does
    "heavy-middle": by_stage(1.02, 0.86, 0.80, 1.03),
    "thin-stage3": by_stage(0.94, 0.87, 1.18, 0.89),
}

# depth candidates: these residual blocks (identity shortcut, so the shapes around them match) become nn.Identity
# before the widths are scaled; the freed budget goes to the width of the rest
DROPPED = {
    "resnet10": ["layer1.1", "layer2.1", "layer3.1", "layer4.1"],
    "drop-late": ["layer3.1", "layer4.1"],
    "drop-early": ["layer1.1", "layer2.1"],
    "drop-stage4": ["layer4.1"],
}
# a depth candidate's stage multipliers (uniform where not named), chosen with --plan so that it stays near both
# limits (drop-early cannot: sparing stage 1 runs out of parameters' room before MACs')
DEPTH_MULTIPLIERS = {"drop-late": by_stage(1.0, 1.0, 1.0, 0.85), "drop-stage4": by_stage(1.0, 1.0, 1.0, 0.85)}
CANDIDATES.update({name: DEPTH_MULTIPLIERS.get(name, lambda g: 1.0) for name in DROPPED})


def candidate(spec: str, dense, cfg, image_size: int = 32, num_classes: int = 10):
    """A candidate named NAME, or NAME*K: NAME scaled to K times both limits (a larger network, to compare at equal
    latency rather than equal MACs)."""
    name, _, k = spec.partition("*")
    if name not in CANDIDATES:
        raise SystemExit(f"unknown candidate '{name}'; choose from {', '.join(CANDIDATES)} (optionally NAME*K)")
    if k:
        cfg = dataclasses.replace(cfg, target_macs=cfg.target_macs * float(k), target_params=cfg.target_params * float(k))
    return build_candidate(dense, cfg, CANDIDATES[name], image_size, num_classes, DROPPED.get(name, ()))


def build_candidate(dense, cfg, multiplier_of, image_size: int, num_classes: int,
                    dropped: list[str] = ()) -> tuple[torch.nn.Module, dict]:
    """`multiplier_of(group root)` scaled to cfg's limits by the width search's own bisection, after the blocks
    `dropped` are removed."""
    dense = drop_blocks(copy.deepcopy(dense), list(dropped))
    roots = group_roots(dense, cfg, image_size, num_classes)
    multipliers = {g: multiplier_of(g) for g in roots}
    scaled = scale_candidate(dense, cfg, roots, multipliers, image_size=image_size, num_classes=num_classes,
                             iterations=12)
    if scaled is None:
        raise SystemExit(f"multipliers {multipliers} cannot meet the limits")
    u, model, _ = scaled
    macs, params = count_macs_params(model, image_size)
    return model, {"dropped": list(dropped), "multipliers": multipliers, "u": u, "macs": macs, "params": params, "widths": layer_widths(model)}


def curves_from_logs(paths: list[str]) -> dict[tuple[str, int], list[float]]:
    """Each (candidate, seed)'s validation accuracy after every epoch, read from this script's printed output."""
    curves, key = {}, None
    for path in paths:
        for line in Path(path).read_text().splitlines():
            head = re.match(r"(\S+), seed (\d+): ", line)
            if head:
                key = (head.group(1), int(head.group(2)))
                curves[key] = []
            epoch = re.search(r"epoch \d+/\d+: .* val acc ([\d.]+)", line)
            if epoch and key is not None:
                curves[key].append(float(epoch.group(1)))
    return curves


def ranks(values: list[float]) -> list[float]:
    """Each value's rank from 0; tied values share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2
        start = end + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation: Pearson's of the ranks (exact with ties too); nan where either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def print_curves(paths: list[str]) -> None:
    """How well the ranking after k epochs predicts the ranking after the last (what a short-training proxy or
    successive halving would rely on): Spearman's rank correlation over the finished runs of the logs."""
    curves = {k: v for k, v in curves_from_logs(paths).items() if v}
    last = max(len(v) for v in curves.values())
    curves = {k: v for k, v in curves.items() if len(v) == last}
    final = [v[-1] for v in curves.values()]
    print("| run | " + " | ".join(f"ep {e}" for e in range(1, last + 1)) + " |")
    print("| :--- |" + " ---: |" * last)
    for (name, seed), v in sorted(curves.items(), key=lambda kv: -kv[1][-1]):
        print(f"| {name} s{seed} | " + " | ".join(f"{100 * x:.1f}" for x in v) + " |")
    print(f"\nSpearman rank correlation of val accuracy after epoch k with after epoch {last} ({len(final)} runs):")
    print(" ".join(f"k={e}: {spearman([v[e - 1] for v in curves.values()], final):+.2f}" for e in range(1, last)))


def print_latency(dense, cfg, args, out: dict) -> None:
    """Each candidate's forward latency at batch 1 and 128, in alternating rounds so drift hits all alike."""
    models = {}
    for name in args.candidates:
        model, info = candidate(name, dense, cfg)
        models[name] = (model.eval(), info, {1: [], 128: []})
    with torch.no_grad():
        for r in range(args.latency):
            for name, (model, info, times) in models.items():
                for batch in times:
                    times[batch].append(latency_ms(model, batch, torch.device("cpu"), warmup=3, min_reps=5,
                                                   min_seconds=0.5, channels_last=False)["median_ms"])
            print(f"round {r + 1} of {args.latency} done", flush=True)
    first = next(iter(models))
    print(f"| candidate | convolutions | MACs | params | ms, batch 1 | ms, batch 128 | / {first}, batch 1 | "
          f"/ {first}, batch 128 |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = {}
    for name, (model, info, times) in models.items():
        med = {b: statistics.median(v) for b, v in times.items()}
        # the median over rounds of the ratio within each round: drift of a shared machine cancels
        ratio = {b: statistics.median(t / u for t, u in zip(v, models[first][2][b])) for b, v in times.items()}
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        rows[name] = {"convolutions": convs, "macs": info["macs"], "params": info["params"], "median_ms": med,
                      "ratio_to_first": ratio, "rounds_ms": times}
        print(f"| {name} | {convs} | {info['macs'] / 1e6:.2f} M | {info['params']:,} | {med[1]:.3f} | {med[128]:.2f} | "
              f"{ratio[1]:.2f}x | {ratio[128]:.2f}x |")
    out["latency"] = {"rows": rows, "first": first, "rounds": args.latency, "threads": args.threads, "machine": machine(),
                      "settings": "PyTorch eager, fp32, NCHW, eval mode, random weights (latency does not depend "
                                  "on them)"}
    write_json(args.json, out)
    print(f"\nwrote {args.json}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="../shared/data/cifar10-jpeg")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.2,
                    help="the final fine-tune's lr in full (and the scratch control's)")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), metavar="NAME[*K]",
                    help=f"from {', '.join(CANDIDATES)}; NAME*K: scaled to K times both limits")
    ap.add_argument("--target-macs", type=float, default=5.29e6)
    ap.add_argument("--target-params", type=float, default=105428)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plan", action="store_true", help="print each candidate's widths, MACs and params; no training")
    ap.add_argument("--probe", type=int, default=0, metavar="N",
                    help="no training: N random stage vectors (multipliers from U(0.7, 1.3)), their MACs and params")
    ap.add_argument("--curves", nargs="+", metavar="LOG",
                    help="no training: from this script's saved output, each run's validation curve and how well "
                         "the ranking after k epochs predicts the final one")
    ap.add_argument("--latency", type=int, default=0, metavar="ROUNDS",
                    help="no training: each candidate's PyTorch latency (eager, fp32, NCHW, eval) at batch 1 and 128 on "
                         "this CPU, in ROUNDS alternating rounds (median reported); stored in the JSON's \"latency\"")
    ap.add_argument("--json", default="benchmarks/results/allocation_study.json")
    args = ap.parse_args()
    if args.curves:
        return print_curves(args.curves)
    torch.set_num_threads(args.threads)
    cfg = make_config("full", {"data_dir": args.data_dir, "val_size": args.val_size, "target_macs": args.target_macs,
                                 "target_params": args.target_params, "progress": False})
    dense = build_model(cfg.model, 10)
    out = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {"runs": []}
    out.update(command=vars(args), recipe={"epochs": args.epochs, "lr": args.lr, "batch_size": cfg.batch_size,
                                            "nesterov": cfg.nesterov, "schedule": "cosine per batch",
                                            "weight_decay": cfg.weight_decay, "augmentation": "pad-crop + flip"})
    if args.probe:  # random stage vectors: how many land near both limits, as uniform does
        g = torch.Generator().manual_seed(1)
        near = 0
        for i in range(args.probe):
            m = (0.7 + 0.6 * torch.rand(4, generator=g, dtype=torch.float64)).tolist()
            _, info = build_candidate(dense, cfg, by_stage(*m), 32, 10)
            close = info["macs"] >= 0.9 * args.target_macs and info["params"] >= 0.9 * args.target_params
            near += close
            print(f"({', '.join(f'{v:.2f}' for v in m)}) MACs {info['macs'] / 1e6:.2f} M params {info['params']:,}"
                  + ("  <- within 10% of both limits" if close else ""), flush=True)
        print(f"{near} of {args.probe} within 10% of both limits")
        return
    if args.latency:
        return print_latency(dense, cfg, args, out)
    if args.plan:
        for name in args.candidates:
            _, info = candidate(name, dense, cfg)
            print(f"{name:18s} MACs {info['macs'] / 1e6:.2f} M  params {info['params']:,}  widths "
                  + " ".join(str(w) for w in info["widths"].values()))
        return
    data = load_data(cfg)
    done = {(r["candidate"], r["seed"]) for r in out["runs"]}
    for seed in args.seeds:
        for name in args.candidates:
            if (name, seed) in done:
                continue
            run_cfg = dataclasses.replace(cfg, seed=seed)
            trainer = Trainer.from_config(run_cfg, torch.device("cpu"), data.inputs)
            model, info = candidate(name, dense, run_cfg, data.inputs.image_size, len(data.classes))
            model = prepare_model(reinitialise(model, seed + 7919), trainer)
            print(f"{name}, seed {seed}: {info['macs'] / 1e6:.2f} M MACs, {info['params']:,} params", flush=True)
            start = time.perf_counter()
            fit(model, data.train, args.epochs, args.lr, trainer=trainer, stage=0, phase=name,
                warmup_epochs=run_cfg.warmup_epochs, val=data.val)
            seconds = time.perf_counter() - start
            row = {"candidate": name, "seed": seed, **info, "train_seconds": seconds,
                   "val_accuracy": score(model, data.val, trainer.normalizer)["accuracy"],
                   "test_accuracy": score(model, data.test, trainer.normalizer)["accuracy"]}
            out["runs"].append(row)
            out["machine"] = machine()
            write_json(args.json, out)  # after every candidate: a killed study resumes after the last one
    print("| candidate | seed | MACs | params | train s | val acc | test acc |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in out["runs"]:
        print(f"| {r['candidate']} | {r['seed']} | {r['macs'] / 1e6:.2f} M | {r['params']:,} | "
              f"{r['train_seconds']:.0f} | {100 * r['val_accuracy']:.2f}% | {100 * r['test_accuracy']:.2f}% |")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
