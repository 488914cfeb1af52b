"""MANY runs of the same flow, gathered: a run with its seeds, controls and INT8 (`run`, what `prunelab run` and
prunelab.run do), and sweeps: one run per (importance, target, seed), sharing the dense model, then a Pareto table.

Two ways to execute a sweep:
- `sweep(base, ...)`: every run here, one after another (resumable: finished runs are skipped);
- `plan(base, ..., plan_dir)`: one config file per run and a commands.txt of `prunelab run --config FILE`
  lines, to run anywhere (a SLURM array, a shell loop over machines); `collect(sweep_dir)` then draws the
  Pareto table and plot from whatever has finished.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from . import distributed, pipeline, report
from .config import Config, resumed_config, to_dict, validate
from .controls import run_controls
from .distributed import log
from .errors import PrunelabError
from .files import write_json, write_text
from .pipeline import from_dense_checkpoint, model_spec
from .quantize import quant_runtime, quantize_run
from .rundir import RunDir, existing_run, open_existing
from .models import build, check_drop_blocks
from .targets import check_targets
from .train import torch_threads


def run(cfg: Config | None = None, resume_dir: str | Path | None = None, model: torch.nn.Module | None = None) -> Path:
    """The run of `cfg` (pipeline.run; or the resumed run in `resume_dir`), once per seed in cfg.seeds, each followed
    by its controls (cfg.controls) and INT8 (cfg.int8). Returns the run directory, or the seeds' group folder.
    `model`: the dense nn.Module to prune instead of building cfg.model (pipeline.run). Leaves the caller's thread
    count as it was."""
    if cfg is None and resume_dir is None:
        raise PrunelabError("run() needs a config, or a run directory to resume")
    if resume_dir is not None:
        cfg = resumed_config(open_existing(resume_dir)[1], cfg)
    if (cfg.seeds or cfg.controls) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PrunelabError("--seeds and --controls run in one process: run them without torchrun (`prunelab control "
                            "RUN` adds controls to a finished run)")
    if cfg.int8:
        quant_runtime(cfg.int8_runtime)  # not installed: the one-line install hint now, not after the run
    with torch_threads(cfg.num_threads):
        if cfg.seeds and resume_dir is None:
            return run_seeds(cfg, model)
        return _run_one(cfg, resume_dir, model)


def _run_one(cfg: Config, resume_dir, model) -> Path:
    path = pipeline.run(cfg, resume_dir, model)
    if cfg.controls:
        run_controls(path, cfg.controls, runtime=cfg, model=model, budget=cfg.control_budget)
    if cfg.int8 and distributed.WORLD.main:
        quantize_run(path, data_dir=cfg.data_dir, runtime=cfg.int8_runtime)
    return path


def run_seeds(cfg: Config, model: torch.nn.Module | None = None) -> Path:
    """cfg once per seed in cfg.seeds, as <out_dir>/<name>/s<seed>/ (with cfg.controls and INT8 each), then
    seeds.md and seeds.json there. The dense baseline is shared when cfg.baseline gives one; otherwise each seed
    trains its own. Finished seeds are skipped, unfinished ones resumed."""
    group = RunDir(Path(cfg.out_dir) / cfg.name)
    for seed in cfg.seeds:
        one = dataclasses.replace(cfg, seed=seed, seeds=[], name=group.seed_run(seed).path.name, out_dir=str(group.path))
        _run_one(one, existing_run(one), model)
    summary = report.seeds_summary(group.path)
    log(f"seeds: wrote {group.path}/seeds.md and seeds.json\n\n" + report.seeds_markdown(summary))
    return group.path


# a sweep's target kinds: the Config field each sets, and how a run's name shows the value
TARGET_KINDS = {
    "macs": ("target_macs", lambda v: f"macs{v / 1e6:g}M"),
    "params": ("target_params", lambda v: f"params{v / 1e3:g}k"),
    "latency_ms": ("target_latency_ms", lambda v: f"lat{v:g}ms"),
    "speedup": ("target_speedup", lambda v: f"speedup{v:g}x"),
}


def configs(base: Config, targets: dict[str, list[float]] | None = None, importances=()) -> list[Config]:
    """One config per (importance, target, seed), each named <importance>-<target>[-s<seed>] under the sweep's
    folder <out_dir>/<name>/, and each carrying base.controls. `targets`: values per kind of TARGET_KINDS (macs,
    params, latency_ms, speedup), one run each; none given: the base config's own target, or its ratio. Every
    run's target is checked before any run starts (a latency or speed-up target is timed for that: seconds). With a
    validation split, seeds and no --baseline, every run's split is drawn with the first seed (val_seed): the dense
    model that the first run trains and the others share left those images out."""
    sweep_dir = Path(base.out_dir) / base.name
    listed = [(kind, value) for kind in TARGET_KINDS for value in (targets or {}).get(kind, ())]
    if not listed:  # no targets given: the base config's own target, or its ratio
        listed = [(kind, getattr(base, field)) for kind, (field, _) in TARGET_KINDS.items() if getattr(base, field)][:1]
    out, checked = [], set()
    if base.val_size and base.val_seed < 0 and not base.baseline and base.seeds:
        # the first run trains the dense model that every other run shares: all validate on the images it left out
        base = dataclasses.replace(base, val_seed=base.seeds[0])
    spec = model_spec(base, base.num_classes or 10)  # the class count moves dense MACs by a few thousand at most;
    size = base.image_size or 32  # the image size is checked again by each run
    if base.drop_blocks:  # the cuts start from the dense model less its dropped blocks (build(spec) removes them)
        check_drop_blocks(build(spec), base.drop_blocks, size)
        spec = dataclasses.replace(spec, dropped_blocks=tuple(base.drop_blocks))
    for importance in importances or [base.importance]:
        for kind, value in listed or [("ratio", base.pruning_ratio)]:
            label = f"ratio{value:g}" if kind == "ratio" else TARGET_KINDS[kind][1](value)
            one_target = {field: (value if k == kind else 0.0) for k, (field, _) in TARGET_KINDS.items()}
            for seed in base.seeds or [base.seed]:
                cfg = dataclasses.replace(base, name=f"{importance}-{label}" + (f"-s{seed}" if base.seeds else ""),
                                          out_dir=str(sweep_dir), importance=importance, seed=seed, seeds=[],
                                          pruning_ratio=value if kind == "ratio" else base.pruning_ratio, **one_target)
                validate(cfg)
                if (kind, value) not in checked:  # once per target (a latency one is timed)
                    check_targets(cfg, spec, size)
                    checked.add((kind, value))
                out.append(cfg)
    return out


def sweep(base: Config, targets: dict[str, list[float]] | None = None, importances=()) -> Path:
    """Every run of the sweep in this process, then pareto.png and pareto.md in <out_dir>/<name>/. The first run
    trains (or loads) the dense model; the others start from its dense checkpoint. Running the same sweep again
    skips finished runs (and controls) and resumes the rest."""
    sweep_dir = Path(base.out_dir) / base.name
    runs = configs(base, targets, importances)
    log(f"sweep '{base.name}': {len(runs)} runs -> {sweep_dir}")
    baseline = base.baseline
    for cfg in runs:
        rd = RunDir(sweep_dir / cfg.name)
        if rd.config.is_file():  # the first run's recipe trained its dense model; the others name it
            cfg = dataclasses.replace(cfg, baseline=open_existing(rd.path)[1].baseline)
        elif baseline and baseline != base.baseline:  # the first run's dense model, shared
            cfg = from_dense_checkpoint(cfg, baseline)
        run(cfg, existing_run(cfg))  # finished: skipped; unfinished: resumed (controls too)
        if not baseline:
            baseline = str(rd.checkpoint(0, cfg.iterative_steps).with_suffix(".safetensors"))
    return collect(sweep_dir)


def plan(base: Config, plan_dir: str | Path, targets: dict[str, list[float]] | None = None,
         importances=()) -> list[Path]:
    """One JSON config per run in plan_dir, and plan_dir/commands.txt with one `prunelab run --config FILE` line
    per run: independent jobs for any scheduler. They start in parallel, so they need a trained dense model
    to share (base.baseline). Returns the config files."""
    if not base.baseline:
        raise PrunelabError("a sweep plan's runs start in parallel and cannot share a dense model they would train "
                            "themselves; pass --baseline FILE (e.g. a run's checkpoints/dense.safetensors)")
    plan_dir = Path(plan_dir)
    files = []
    for cfg in configs(base, targets, importances):
        path = plan_dir / f"{cfg.name}.json"
        write_json(path, {**to_dict(cfg), "baseline": str(Path(cfg.baseline).resolve()),
                          "out_dir": str(Path(cfg.out_dir).resolve()),
                          "data_dir": str(Path(cfg.data_dir).resolve()) if cfg.data_format != "synthetic" else cfg.data_dir})
        files.append(path)
    write_text(plan_dir / "commands.txt", "".join(f"prunelab run --or-resume --config {p.resolve()}\n" for p in files))
    sweep_dir = (Path(base.out_dir) / base.name).resolve()
    log(f"sweep plan '{base.name}': {len(files)} runs in {plan_dir}/commands.txt (one line per job; each resumes "
        f"if started again); then `prunelab collect {sweep_dir}`")
    return files


def collect(sweep_dir: str | Path) -> Path:
    """pareto.md and pareto.png from the finished runs under sweep_dir (grouped over seeds)."""
    rows = report.render_sweep(sweep_dir)
    log(f"wrote {sweep_dir}/pareto.md and pareto.png ({len(rows)} runs)")
    return Path(sweep_dir)
