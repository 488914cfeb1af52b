"""The controls a careful reader of a pruning result asks for: runs of the same flow, added to a finished run.

- **scratch**: the final pruned architecture, re-initialised at random and trained on the same data with the
  same augmentation, for the same training wall time as the run's prune-and-fine-tune phase (`budget time`)
  or for as many training images (`budget images`; the run's `control_budget` unless asked otherwise), at the
  rate the final fine-tune ran at (`final_finetune_lr`, else `finetune_lr`, or what `lr_probe` chose; or
  `control_lr`). Liu et al., "Rethinking the Value of
  Network Pruning" (ICLR 2019). When the run distilled, the control distils from the same teacher (its --teacher,
  else the run's dense model) in the same way, unless asked not to (`distill=False`): a teacher helps a network
  from scratch too, and only a control that has it says what the pruning itself bought. Trains through train.fit
  like every stage; lives in `<run>/controls/scratch/`.
- **scratch-long**: the same, on as many training images as the dense training and the prune-and-fine-tune phase
  together (Liu et al.'s budget: what the pruned model cost in all, counted in images; a --baseline's own training
  images are given as `baseline_images`). `<run>/controls/scratch-long/`.
- **random**: the same run with the `random` importance criterion, from the same dense checkpoint. A normal
  run directory, `<run>/controls/random/`.

Each control is resumable like a run: finished parts are never redone. Their rows in the run's report are the
report's to read (report.control_rows).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from . import modelfile, report
from .config import CONTROL_BUDGETS, CONTROLS, LONG_NEEDS_IMAGES, Config, final_lr, runtime_settings, to_dict
from .data import Data, load_data
from .distributed import log
from .errors import PrunelabError
from .files import read_jsonl, write_json
from .pipeline import (cached_distillation, check_same_teacher, check_same_test_images, from_dense_checkpoint,
                       frozen_teacher, load_teacher, model_spec, run)
from .prune import count_macs_params
from .rundir import RunDir, create, existing_run, open_existing
from .train import (Distillation, Trainer, fit, make_optimizer, prepare_model, resolve_device, score, stage_bn_images,
                    train_epoch)


def run_controls(run_dir: str | Path, kinds, runtime: Config | None = None, model: torch.nn.Module | None = None,
                 budget: str | None = None, distill: bool = True) -> list[dict]:
    """Run the controls `kinds` of a finished run (skipping finished ones), then refresh the run's report;
    returns their result rows. `runtime`: a config whose runtime settings (device, threads, ...) the controls
    use. `model`: the dense nn.Module, for a run made from one (as prunelab.run(model=...) needed it). `budget`:
    the scratch control's, time or images (None: the run's control_budget, after `runtime`'s).
    `distill`: the scratch controls of a run that distilled distil too (False: they train on the labels alone)."""
    for kind in kinds:
        if kind not in CONTROLS:
            raise PrunelabError(f"unknown control '{kind}'; choose from: {', '.join(CONTROLS)}")
    rd, cfg = open_existing(run_dir)
    if runtime is not None:
        cfg = dataclasses.replace(cfg, **{k: v for k, v in runtime_settings(runtime).items()
                                          if k not in ("name", "out_dir")})
    budget = budget or cfg.control_budget
    if budget not in CONTROL_BUDGETS:
        raise PrunelabError(f"unknown control budget '{budget}'; choose from: {', '.join(CONTROL_BUDGETS)}")
    if not rd.results.is_file():
        raise PrunelabError(f"a control needs a finished run with a pruned model, and {rd.path} has not finished; "
                            f"finish it with `prunelab run --resume {rd.path}`")
    if "scratch-long" in kinds and not rd.control("scratch-long").finished and cfg.baseline and not cfg.baseline_images:
        raise PrunelabError(LONG_NEEDS_IMAGES)
    data = None
    # once, for the unfinished controls (the random control's run loads it again itself)
    if any(not rd.control(k).finished for k in kinds):
        data = load_data(cfg)
        check_same_test_images(rd, data)
    # whether each unfinished scratch control distils: as planned when it started, else as the run did (unless not
    # `distill`); the teacher loaded and checked once, before any control trains, when one of them needs it
    planned = {k: json.loads(rd.control(k).plan.read_text()).get("distilled", False) if rd.control(k).plan.is_file()
               else None for k in kinds if k != "random" and not rd.control(k).finished}
    started = [k for k, d in planned.items() if d and not distill]
    if started:
        raise PrunelabError(started_distilling(rd.control(started[0])))
    need = cfg.distill and any(d or (d is None and distill) for d in planned.values())
    teacher = control_teacher(rd, cfg, data, model) if need else None
    rows = [scratch(rd, cfg, data, budget, model, teacher=teacher) if kind == "scratch" else
            scratch(rd, cfg, data, "dense+images", model, kind=kind, teacher=teacher) if kind == "scratch-long" else
            random_criterion(rd, cfg, model) for kind in kinds]
    report.refresh(rd.path)  # the summary, report and plot gain the controls' rows
    return rows


def random_criterion(rd: RunDir, cfg: Config, model: torch.nn.Module | None = None) -> dict:
    """The run again with the random importance, from the run's own dense checkpoint."""
    out = rd.control("random")
    if out.finished:
        return report.control_row(out)
    control = from_dense_checkpoint(dataclasses.replace(cfg, name=out.path.name, out_dir=str(out.path.parent),
                                                        importance="random", controls=[], seeds=[], int8=False),
                                    rd.checkpoint_named("dense").with_suffix(".safetensors").resolve())
    run(control, existing_run(control), model=model)
    return report.control_row(out)


def _budget(rd: RunDir) -> tuple[float, int, int]:
    """Training seconds and training images of the run's prune-and-fine-tune phase (every epoch after the
    dense stage, sparse training included, and every reconstruction after a cut: both train the pruned model's
    weights; pruning itself, evaluation and latency measurement excluded, and so are the width search and the lr
    probe, which choose and do not train the final model: their time is in the run's wall time), and the training
    images of its dense stage (its own epochs; a --baseline's are not in the run)."""
    rows = read_jsonl(rd.metrics)
    n_train = next(r["train_images"] for r in rows if r["event"] == "dense")
    epochs = [r for r in rows if r["event"] == "epoch" and r["stage"] != 0]  # sparse training: -1
    dense = [r for r in rows if r["event"] == "epoch" and r["stage"] == 0]
    refits = [r["reconstruction"] for r in rows if r["event"] == "step" and "reconstruction" in r]
    return (sum(r["seconds"] for r in epochs) + sum(r["seconds"] for r in refits),
            sum(r.get("images", n_train) for r in epochs) + sum(r["images"] for r in refits),
            sum(r.get("images", n_train) for r in dense))


def _run_lr(rd: RunDir, cfg: Config) -> float:
    """The rate the run's final fine-tune ran at (what --lr-probe chose, where it probed), else the configured one."""
    ran = [r["lr"] for r in read_jsonl(rd.metrics) if r["event"] == "final" and r.get("lr")]
    return ran[-1] if ran else final_lr(cfg)


def started_distilling(crd: RunDir) -> str:
    return (f"control {crd.path.name} in {crd.path} started distilling from the run's teacher; resume it without "
            f"--no-distill, or delete {crd.path} to redo it on the labels")


def control_teacher(rd: RunDir, cfg: Config, data: Data, given: torch.nn.Module | None = None) -> torch.nn.Module:
    """The model the run distilled from: its --teacher (the same file: its weights' SHA-256 is checked), else the
    run's dense model (its checkpoint). `given`: the dense nn.Module of a run made from one."""
    if not cfg.teacher:
        return modelfile.load(rd.model_file("dense"), model=given, named=cfg.model)[0]
    if not Path(cfg.teacher).is_file():
        raise PrunelabError(f"{rd.path} distilled from {cfg.teacher}, which is not there; put that file back (a path "
                            "relative to where the run started), or train the controls on the labels alone "
                            "(--no-distill)")
    check_same_teacher(rd, cfg.teacher)
    return load_teacher(cfg, data, model_spec(cfg, len(data.classes), given))


def scratch(rd: RunDir, cfg: Config, data: Data | None, budget: str = "time",
            given: torch.nn.Module | None = None, kind: str = "scratch",
            teacher: torch.nn.Module | None = None) -> dict:
    """The final architecture, re-initialised and trained from scratch on `data` (the run's); returns its result
    row (also its results.json). `budget`: time, images, or dense+images (the scratch-long control). `teacher`
    (control_teacher): distil from it as the run did (a control planned without distillation keeps training
    without)."""
    crd = rd.control(kind)
    plan = json.loads(crd.plan.read_text()) if crd.plan.is_file() else None  # a resumed control keeps its plan
    if plan and plan.get("budget", budget) != budget:  # (its budget too)
        log(f"control {kind}: keeps the {plan['budget']} budget it was planned with, not {budget}; delete {crd.path} "
            "to redo it")
    if crd.finished:
        log(f"control {kind}: {crd.path} already finished")
        return report.control_row(crd)
    trainer = Trainer.from_config(cfg, resolve_device(cfg.device), data.inputs)
    model, desc = modelfile.load(rd.model_file("final"), model=given, named=cfg.model)
    model = prepare_model(reinitialise(model, cfg.seed + 7919), trainer)
    spec = modelfile.specs(desc)[0]
    control = dataclasses.replace(cfg, name=crd.path.name, out_dir=str(crd.path.parent), controls=[], seeds=[],
                                  int8=False, baseline="")
    train, test = data.train.to(trainer.device), data.test.to(trainer.device)
    val = data.val.to(trainer.device) if data.val else None
    distilled = plan.get("distilled", False) if plan else teacher is not None  # (old plans never distilled)
    if distilled and teacher is None:
        raise PrunelabError(started_distilling(crd))
    distill, made = None, {}
    if distilled:
        distill = Distillation(cfg.distill_temperature, cfg.distill_weight, teacher=frozen_teacher(teacher, trainer))
        if cfg.distill_cached:
            distill, made = cached_distillation(cfg, distill, train, trainer)
    elif cfg.distill and plan:
        log(f"control {kind}: keeps training on the labels alone, as it was planned; delete {crd.path} to redo it "
            "distilled")
    elif cfg.distill:
        log(f"control {kind}: on the labels alone (--no-distill), though the run distilled")
    if plan:
        plan.setdefault("lr", cfg.lr)  # planned by a version that trained the control at the dense lr
        plan["distilled"] = distilled
    else:
        seconds, images, dense_images = _budget(rd)
        if budget == "dense+images":
            images += dense_images + (cfg.baseline_images if cfg.baseline else 0)  # a run's own dense: counted
        if budget in ("images", "dense+images"):
            epochs, per_epoch = max(1, round(images / len(train))), None
        else:  # (a teacher run on every batch is in the run's epoch seconds, so in the probe's too)
            per_epoch = seconds_per_epoch(model, train, trainer, distill=distill)
            epochs = epochs_for(seconds, per_epoch)
        plan = {"budget": budget, "budget_seconds": seconds, "budget_images": images, "epochs": epochs,
                "measured_seconds_per_epoch": per_epoch, "lr": cfg.control_lr or _run_lr(rd, cfg),
                "distilled": distilled}
        if not crd.config.is_file():
            create(control)
        write_json(crd.plan, plan)
    log(f"control {kind}: the final architecture re-initialised, {report.counted(plan['epochs'], 'epoch')} ("
        + {"time": "same training time as the prune-and-fine-tune phase",
           "images": "same training images as the prune-and-fine-tune phase",
           "dense+images": "as many training images as the dense training and the prune-and-fine-tune phase"}
        [plan["budget"]] + f": {plan['budget_seconds']:.0f} s, {plan['budget_images']:,} images), lr {plan['lr']:g}"
        + (", distilled from the run's teacher" if distilled else ""))

    def replan(first_epoch_seconds: float) -> int:
        """The time budget again, from the first real epoch instead of the few probe batches: this machine's
        speed moves by a quarter from minute to minute, and a probe of 4 batches once planned 4 epochs for 7."""
        if plan["budget"] != "time":
            return plan["epochs"]
        epochs = epochs_for(plan["budget_seconds"], first_epoch_seconds)
        if epochs != plan["epochs"]:
            log(f"control {kind}: the first epoch took {first_epoch_seconds:.0f} s, so "
                f"{report.counted(epochs, 'epoch')} fit the budget (the probe said {plan['epochs']})")
            plan.update(epochs=epochs, probe_epochs=plan["epochs"], first_epoch_seconds=first_epoch_seconds)
            write_json(crd.plan, plan)  # before the epoch's partial checkpoint: a resume keeps the new count
        return epochs

    start = time.perf_counter()
    fit(model, train, plan["epochs"], plan["lr"], trainer=trainer, stage=0, phase=f"{kind} control",
        warmup_epochs=cfg.warmup_epochs, val=val, run_dir=crd, replan=replan, distill=distill,
        bn_images=stage_bn_images(model, cfg.bn_reestimate_images))  # as the pruned run's stages do
    epoch_rows = [r for r in read_jsonl(crd.metrics) if r["event"] == "epoch"]
    macs, params = count_macs_params(model, data.inputs.image_size)
    row = {"control": kind, "accuracy": score(model, test, trainer.normalizer, cfg.eval_batch_size)["accuracy"],
           "params": params, "macs": macs, "epochs": plan["epochs"], "lr": plan["lr"],
           "train_seconds": sum(r["seconds"] for r in epoch_rows), "train_images": sum(r["images"] for r in epoch_rows),
           **{k: plan[k] for k in ("budget", "budget_seconds", "budget_images", "distilled")}, **made,
           "wall_seconds_this_session": time.perf_counter() - start}
    modelfile.save(crd.model, model, spec, desc.get("pruning_history") or [],
                   extra={"metrics": row, "config": to_dict(control)}, inputs=data.inputs)
    write_json(crd.results, row)  # last: its presence means the control is complete
    log(f"control {kind}: test acc {row['accuracy']:.4f} after {report.counted(row['epochs'], 'epoch')} "
        f"({row['train_seconds']:.0f} s of training)")
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


def epochs_for(budget_seconds: float, seconds_per_epoch: float) -> int:
    """The epoch count whose training time comes nearest the budget (at least one)."""
    return max(1, math.floor(budget_seconds / seconds_per_epoch + 0.5))


def seconds_per_epoch(model: torch.nn.Module, split, trainer: Trainer, batches: int = 4,
                      distill: Distillation | None = None) -> float:
    """Training seconds per epoch of `model` on `split`, from `batches` full timed batches after one untimed
    (on a copy, so the weights to be trained are not touched), with the loss of `distill` if given."""
    probe = copy.deepcopy(model)
    bs = min(trainer.batch_size, len(split))
    g = torch.Generator().manual_seed(0)
    opt = make_optimizer(probe, trainer, 0.1)  # the lr does not change the time

    def part(idx: torch.Tensor) -> tuple:  # the images idx, and their rows of cached targets
        cached = distill is not None and distill.targets is not None
        return split.subset(idx), distill.subset(idx) if cached else distill

    first, first_distill = part(torch.arange(bs))
    train_epoch(probe, first, opt, None, trainer, g, desc="timing", distill=first_distill)
    timed = min(len(split) // bs, batches) * bs
    last, last_distill = part(torch.arange(len(split) - timed, len(split)))
    stats = train_epoch(probe, last, opt, None, trainer, g, desc="timing", distill=last_distill)
    return stats["seconds"] / timed * len(split)
