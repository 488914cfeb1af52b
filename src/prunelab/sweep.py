"""Many runs of the same flow: one per (importance, target, seed), sharing the dense model, then a Pareto table.

Two ways to execute a sweep:
- `sweep(base, ...)`: every run here, one after another (resumable: finished runs are skipped);
- `plan(base, ..., plan_dir)`: one config file per run and a commands.txt of `prunelab run --config FILE`
  lines, to run anywhere (a SLURM array, a shell loop over machines); `collect(sweep_dir)` then draws the
  Pareto table and plot from whatever has finished.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from . import report
from .config import Config, PrunelabError, runtime_settings, to_dict, validate
from .files import write_json, write_text
from .pipeline import _check_targets, log, model_spec, run
from .rundir import RunDir, open_existing


def configs(base: Config, targets_macs=(), targets_params=(), importances=()) -> list[Config]:
    """One config per (importance, target, seed), each named <importance>-<target>[-s<seed>] under the sweep's
    folder <out_dir>/<name>/, and each carrying base.controls."""
    sweep_dir = Path(base.out_dir) / base.name
    targets = [("macs", t) for t in targets_macs] + [("params", t) for t in targets_params]
    if not targets:  # no targets given: the base config's own target, or its ratio
        targets = [("macs", base.target_macs)] if base.target_macs else \
            [("params", base.target_params)] if base.target_params else [("ratio", base.pruning_ratio)]
    out = []
    for importance in importances or [base.importance]:
        for kind, value in targets:
            label = {"macs": f"macs{value / 1e6:g}M", "params": f"params{value / 1e3:g}k", "ratio": f"ratio{value:g}"}[kind]
            for seed in base.seeds or [base.seed]:
                cfg = dataclasses.replace(base, name=f"{importance}-{label}" + (f"-s{seed}" if base.seeds else ""),
                                          out_dir=str(sweep_dir), importance=importance, seed=seed, seeds=[],
                                          target_macs=value if kind == "macs" else 0.0,
                                          target_params=value if kind == "params" else 0.0,
                                          pruning_ratio=value if kind == "ratio" else base.pruning_ratio)
                validate(cfg)
                _check_targets(cfg, model_spec(cfg, cfg.num_classes or 10), cfg.image_size or 32)  # the class count
                # moves dense MACs by a few thousand at most; the image size is checked again by each run
                out.append(cfg)
    return out


def sweep(base: Config, targets_macs=(), targets_params=(), importances=()) -> Path:
    """Every run of the sweep in this process, then pareto.png and pareto.md in <out_dir>/<name>/. The first run
    trains (or loads) the dense model; the others start from its dense checkpoint. Running the same sweep again
    skips finished runs (and controls) and resumes the rest."""
    sweep_dir = Path(base.out_dir) / base.name
    runs = configs(base, targets_macs, targets_params, importances)
    log(f"sweep '{base.name}': {len(runs)} runs -> {sweep_dir}")
    baseline = base.baseline
    for cfg in runs:
        rd = RunDir(sweep_dir / cfg.name)
        if rd.config.is_file():  # resumed with its own recipe and this command's runtime settings (controls too);
            run(dataclasses.replace(open_existing(rd.path)[1], **runtime_settings(cfg)), rd.path)  # finished: skipped
        else:
            run(dataclasses.replace(cfg, baseline=baseline))
        if not baseline:
            baseline = str(rd.checkpoint(0, cfg.iterative_steps).with_suffix(".safetensors"))
    return collect(sweep_dir)


def plan(base: Config, plan_dir: str | Path, targets_macs=(), targets_params=(), importances=()) -> list[Path]:
    """One JSON config per run in plan_dir, and plan_dir/commands.txt with one `prunelab run --config FILE` line
    per run: independent jobs for any scheduler. They start in parallel, so they need a trained dense model
    to share (base.baseline). Returns the config files."""
    if not base.baseline:
        raise PrunelabError("a sweep plan's runs start in parallel and cannot share a dense model they would train "
                            "themselves; pass --baseline FILE (e.g. a run's checkpoints/dense.safetensors)")
    plan_dir = Path(plan_dir)
    files = []
    for cfg in configs(base, targets_macs, targets_params, importances):
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
