"""The controls a careful reader of a pruning result asks for, and repeats over seeds.

- **scratch**: the final pruned architecture, re-initialised at random and trained on the same data with the
  same augmentation, for the same training wall time as the run's prune-and-fine-tune phase (`budget time`,
  the default) or for as many training images (`budget images`), at the final fine-tune's learning rate
  (`final_finetune_lr`, else `finetune_lr`; or `control_lr`). Liu et al., "Rethinking the Value of
  Network Pruning" (ICLR 2019). Lives in `<run>/controls/scratch/`.
- **random**: the same run with the `random` importance criterion, from the same dense checkpoint. A normal
  run directory, `<run>/controls/random/`.
- **seeds**: the same run once per seed under `<out_dir>/<name>/s<seed>/`, then seeds.md and seeds.json with
  mean and standard deviation (Blalock et al., MLSys 2020: a difference smaller than the spread is a tie).

Each control is resumable like a run: finished parts are never redone.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import torch

from . import modelfile
from .config import Config, PrunelabError, final_lr, runtime_settings, to_dict
from .data import load_data
from .files import read_jsonl, write_json, write_text
from .prune import count_macs_params
from .report import counted
from .rundir import RunDir, open_existing

CONTROLS = ("scratch", "random")
CONTROL_BUDGETS = ("time", "images")


def control_dir(run_dir: str | Path, kind: str) -> Path:
    return Path(run_dir) / "controls" / kind


def _finished_marker(run_dir: str | Path, kind: str) -> Path:
    """The file whose presence means the control `kind` of a run is complete (written last)."""
    return control_dir(run_dir, kind) / ("result.json" if kind == "scratch" else "results.json")


def _finished(run_dir: str | Path) -> tuple[RunDir, Config]:
    rd, cfg = open_existing(run_dir)
    if not rd.results.is_file():
        raise PrunelabError(f"a control needs a finished run with a pruned model, and {rd.path} has not finished; "
                            f"finish it with `prunelab run --resume {rd.path}`")
    return rd, cfg


def run_controls(run_dir: str | Path, kinds, runtime: Config | None = None, model: torch.nn.Module | None = None,
                 budget: str = "time") -> list[dict]:
    """Run the controls `kinds` of a finished run (skipping finished ones); returns their result rows.
    `runtime`: a config whose runtime settings (device, threads, ...) the controls use. `model`: the dense
    nn.Module, for a run made from one (as prunelab.run(model=...) needed it)."""
    for kind in kinds:
        if kind not in CONTROLS:
            raise PrunelabError(f"unknown control '{kind}'; choose from: {', '.join(CONTROLS)}")
    if budget not in CONTROL_BUDGETS:
        raise PrunelabError(f"unknown control budget '{budget}'; choose from: {', '.join(CONTROL_BUDGETS)}")
    rd, cfg = _finished(run_dir)
    if runtime is not None:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in runtime_settings(runtime).items()
                                          if k not in ("name", "out_dir")})
    data = None
    # once, for the unfinished controls (the random control's run loads it again itself)
    if any(not _finished_marker(rd.path, k).is_file() for k in kinds):
        from .pipeline import check_same_test_images
        data = load_data(cfg)
        check_same_test_images(rd, data)
    rows = []
    for kind in kinds:
        rows.append(scratch(rd, cfg, data, budget, model) if kind == "scratch" else random_criterion(rd, cfg, model))
    from .report import build_results, render
    results = build_results(rd.path)  # the summary, report and plot gain the controls' rows
    write_json(rd.results, results)
    render(rd.path, results)
    return rows


def random_criterion(rd: RunDir, cfg: Config, model: torch.nn.Module | None = None) -> dict:
    """The run again with the random importance, from the run's own dense checkpoint."""
    from .pipeline import run
    out = control_dir(rd.path, "random")
    dense = rd.checkpoint_named("dense").with_suffix(".safetensors")
    control = dataclasses.replace(cfg, name=out.name, out_dir=str(out.parent), importance="random", controls=[],
                                  seeds=[], int8=False, baseline=str(dense))
    if (out / "config.json").is_file():
        run(dataclasses.replace(open_existing(out)[1], **runtime_settings(control)), out, model=model)
    else:
        run(control, model=model)
    return control_row(out)


def _budget(rd: RunDir, cfg: Config, n_train: int) -> tuple[float, int]:
    """Training seconds and training images of the run's prune-and-fine-tune phase (every epoch after the
    dense stage, sparse training included; pruning itself, evaluation and latency measurement excluded)."""
    epochs = [r for r in read_jsonl(rd.metrics) if r["event"] == "epoch" and r["stage"] != 0]  # sparse training: -1
    return sum(r["seconds"] for r in epochs), sum(r.get("images", n_train) for r in epochs)


def scratch(rd: RunDir, cfg: Config, data, budget: str = "time", given: torch.nn.Module | None = None) -> dict:
    """The final architecture, re-initialised and trained from scratch on `data` (the run's); returns its result
    row."""
    from .pipeline import _Stages, log
    from .rundir import create
    from .train import Trainer, resolve_device

    out = control_dir(rd.path, "scratch")
    result_path = _finished_marker(rd.path, "scratch")
    if result_path.is_file():
        log(f"control scratch: {out} already finished")
        return json.loads(result_path.read_text())
    device = resolve_device(cfg.device)
    trainer = Trainer.from_config(cfg, device, data.inputs)
    model, desc = modelfile.load(rd.checkpoint_named("final").with_suffix(".json"), model=given)
    reinitialise(model, cfg.seed + 7919)
    spec = modelfile.specs(desc)[0]
    control = dataclasses.replace(cfg, name=out.name, out_dir=str(out.parent), controls=[], seeds=[], int8=False,
                                  baseline="")
    crd = RunDir(out)
    stages = _Stages(control, crd, trainer, device, data, spec, given)
    model = stages._prepare_model(model)
    plan_path = out / "plan.json"
    if plan_path.is_file():  # a resumed control keeps the epoch count it planned
        plan = json.loads(plan_path.read_text())
        plan.setdefault("lr", cfg.lr)  # planned by a version that trained the control at the dense lr
    else:
        seconds, images = _budget(rd, cfg, len(data.train))
        if budget == "images":
            epochs = max(1, round(images / len(data.train)))
            per_epoch = None
        else:
            per_epoch = _seconds_per_epoch(model, data.train, trainer, cfg)
            epochs = _epochs_for(seconds, per_epoch)
        plan = {"budget": budget, "budget_seconds": seconds, "budget_images": images, "epochs": epochs,
                "measured_seconds_per_epoch": per_epoch, "lr": cfg.control_lr or final_lr(cfg)}
        if not (out / "config.json").is_file():
            create(control)
        write_json(plan_path, plan)
    log(f"control scratch: the final architecture re-initialised, {counted(plan['epochs'], 'epoch')} "
        f"({'same training time' if budget == 'time' else 'same training images'} as the prune-and-fine-tune "
        f"phase: {plan['budget_seconds']:.0f} s, {plan['budget_images']:,} images), lr {plan['lr']:g}")
    def replan(first_epoch_seconds: float) -> int:
        """The time budget again, from the first real epoch instead of the few probe batches: this machine's
        speed moves by a quarter from minute to minute, and a probe of 4 batches once planned 4 epochs for 7."""
        if plan["budget"] != "time":
            return plan["epochs"]
        epochs = _epochs_for(plan["budget_seconds"], first_epoch_seconds)
        if epochs != plan["epochs"]:
            log(f"control scratch: the first epoch took {first_epoch_seconds:.0f} s, so {counted(epochs, 'epoch')} "
                f"fit the budget (the probe said {plan['epochs']})")
            plan.update(epochs=epochs, probe_epochs=plan["epochs"], first_epoch_seconds=first_epoch_seconds)
            write_json(plan_path, plan)  # before the epoch's partial checkpoint: a resume keeps the new count
        return epochs

    start = time.perf_counter()
    stages._fit(model, 0, "scratch control", plan["epochs"], plan["lr"], cfg.warmup_epochs, split=stages.train,
                replan=replan)
    seconds = sum(r["seconds"] for r in read_jsonl(crd.metrics) if r["event"] == "epoch")
    macs, params = count_macs_params(model, data.inputs.image_size)
    row = {"control": "scratch", "accuracy": stages._accuracy(model, stages.test), "params": params, "macs": macs,
           "epochs": plan["epochs"], "lr": plan["lr"], "train_seconds": seconds, "train_images": plan["epochs"] * len(data.train),
           **{k: plan[k] for k in ("budget", "budget_seconds", "budget_images")},
           "wall_seconds_this_session": time.perf_counter() - start}
    modelfile.save(out / "model", model, spec, desc.get("pruning_history") or [], extra={"metrics": row, "config": to_dict(control)},
                   inputs=data.inputs)
    write_json(result_path, row)  # last: its presence means the control is complete
    log(f"control scratch: test acc {row['accuracy']:.4f} after {counted(row['epochs'], 'epoch')} ({seconds:.0f} s of training)")
    return row


def reinitialise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every layer's parameters and buffers drawn anew by its own initialiser (reset_parameters), in place;
    the architecture (the pruned widths) is kept."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    return model


def _epochs_for(budget_seconds: float, seconds_per_epoch: float) -> int:
    """The epoch count whose training time comes nearest the budget (at least one)."""
    return max(1, math.floor(budget_seconds / seconds_per_epoch + 0.5))


def _seconds_per_epoch(model, split, trainer, cfg, batches: int = 4) -> float:
    """Training seconds per epoch of `model` on `split`, from `batches` full timed batches after one untimed
    (on a copy, so the weights to be trained are not touched)."""
    import copy

    from .train import make_optimizer, train_epoch
    probe = copy.deepcopy(model)
    bs = min(cfg.batch_size, len(split))
    g = torch.Generator().manual_seed(0)
    opt = make_optimizer(probe, cfg, cfg.lr)
    train_epoch(probe, split.subset(torch.arange(bs)), opt, None, trainer, g, desc="timing")
    timed = min(len(split) // bs, batches) * bs
    stats = train_epoch(probe, split.subset(torch.arange(len(split) - timed, len(split))), opt, None, trainer, g,
                        desc="timing")
    return stats["seconds"] / timed * len(split)


def control_row(path: Path) -> dict:
    """The result row of a finished control directory (scratch: result.json; random: its results.json)."""
    if (path / "result.json").is_file():
        return json.loads((path / "result.json").read_text())
    r = json.loads((path / "results.json").read_text())
    f = r["final"]
    return {"control": path.name, "accuracy": f["accuracy"], "params": f["params"], "macs": f["macs"],
            "train_seconds": sum(e["seconds"] for e in r["epochs"] if e["stage"] != 0),
            "train_images": sum(1 for e in r["epochs"] if e["stage"] != 0) * r["data"]["train_images"]}


def control_rows(run_dir: str | Path) -> list[dict]:
    """Finished controls of a run, for its report."""
    return [control_row(control_dir(run_dir, k)) for k in CONTROLS
            if (control_dir(run_dir, k) / "result.json").is_file() or (control_dir(run_dir, k) / "results.json").is_file()]


# ----------------------------------------------------------------------------- seeds

def run_seeds(cfg: Config, model: torch.nn.Module | None = None) -> Path:
    """cfg once per seed in cfg.seeds, as <out_dir>/<name>/s<seed>/ (with cfg.controls each), then seeds.md and
    seeds.json there. The dense baseline is shared when cfg.baseline gives one; otherwise each seed trains its
    own. Finished seeds are skipped, unfinished ones resumed."""
    from .pipeline import log, run
    if len(set(cfg.seeds)) != len(cfg.seeds) or any(s < 0 for s in cfg.seeds):
        raise PrunelabError(f"seeds must be distinct non-negative integers, got {cfg.seeds}")
    group = Path(cfg.out_dir) / cfg.name
    for seed in cfg.seeds:
        one = dataclasses.replace(cfg, seed=seed, seeds=[], name=f"s{seed}", out_dir=str(group))
        rd = RunDir(group / one.name)
        if rd.results.is_file():
            log(f"seeds: {rd.path} already finished")
        elif rd.config.is_file():
            run(dataclasses.replace(open_existing(rd.path)[1], **runtime_settings(one)), rd.path, model=model)
        else:
            run(one, model=model)
        if cfg.controls:
            run_controls(rd.path, cfg.controls, runtime=one, model=model, budget=cfg.control_budget)
    summary = seeds_summary(group)
    log(f"seeds: wrote {group}/seeds.md and seeds.json\n\n" + seeds_markdown(summary))
    return group


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def seeds_summary(group: str | Path) -> dict:
    """Mean and standard deviation over the finished seed runs s*/ of a group (accuracy of dense, pruned and
    each control), written to seeds.json and seeds.md."""
    group = Path(group)
    runs = sorted((p for p in group.glob("s*/results.json")), key=lambda p: int(p.parent.name[1:]))
    if not runs:
        raise PrunelabError(f"{group} holds no finished seed runs (s<seed>/results.json)")
    columns: dict[str, list[float]] = {}
    seeds = []
    for p in runs:
        r = json.loads(p.read_text())
        seeds.append(r["config"]["seed"])
        columns.setdefault("dense", []).append(r["dense"]["accuracy"])
        columns.setdefault("pruned", []).append(r["final"]["accuracy"])
        for c in control_rows(p.parent):
            columns.setdefault(f"{c['control']} control", []).append(c["accuracy"])
    summary = {"group": group.name, "seeds": seeds, "accuracy": {k: mean_std(v) for k, v in columns.items()},
               "macs": json.loads(runs[0].read_text())["final"]["macs"]}
    write_json(group / "seeds.json", summary)
    write_text(group / "seeds.md", seeds_markdown(summary))
    return summary


def compare(a: dict, b: dict) -> str:
    """'+1.20 pts, larger than the spread' or '... a tie': a difference of means against the larger std."""
    diff = 100 * (a["mean"] - b["mean"])
    spread = 100 * max(a["std"], b["std"])
    if min(a["n"], b["n"]) < 2:
        return f"{diff:+.2f} pts (one seed: no spread to compare with)"
    return f"{diff:+.2f} pts, " + ("a tie: within the spread between seeds" if abs(diff) <= spread
                                   else "larger than the spread between seeds") + f" ({spread:.2f} pts)"


def seeds_markdown(summary: dict) -> str:
    acc = summary["accuracy"]
    lines = [f"# `{summary['group']}` over seeds {', '.join(map(str, summary['seeds']))}", "",
             "| model | test accuracy, mean ± std | per seed |", "| :--- | ---: | :--- |"]
    for name, s in acc.items():
        lines.append(f"| {name} | {100 * s['mean']:.2f}% ± {100 * s['std']:.2f} | "
                     + ", ".join(f"{100 * v:.2f}%" for v in s["values"]) + " |")
    lines.append("")
    for name in acc:
        if name.endswith("control") and len(acc[name]["values"]) == len(acc["pruned"]["values"]):
            lines.append(f"- pruned vs {name}: {compare(acc['pruned'], acc[name])}.")
    return "\n".join(lines) + "\n"
