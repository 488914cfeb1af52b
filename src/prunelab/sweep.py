"""Many runs of the same flow: one per (importance, target), sharing the dense model, then a Pareto table."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from . import report
from .config import Config, runtime_settings, validate
from .pipeline import _check_targets, log, model_spec, run
from .rundir import RunDir, open_existing


def sweep(base: Config, targets_macs=(), targets_params=(), importances=()) -> Path:
    """One run per (importance, target) under <out_dir>/<name>/, then pareto.png and pareto.md there.
    The first run trains (or loads) the dense model; the others start from its dense checkpoint. Each run is
    a normal, resumable run directory: running the same sweep again skips finished runs and resumes the rest."""
    sweep_dir = Path(base.out_dir) / base.name
    targets = [("macs", t) for t in targets_macs] + [("params", t) for t in targets_params]
    if not targets:  # no targets given: the base config's own target, or its ratio
        targets = [("macs", base.target_macs)] if base.target_macs else \
            [("params", base.target_params)] if base.target_params else [("ratio", base.pruning_ratio)]
    configs = []
    for importance in importances or [base.importance]:
        for kind, value in targets:
            label = {"macs": f"macs{value / 1e6:g}M", "params": f"params{value / 1e3:g}k", "ratio": f"ratio{value:g}"}[kind]
            cfg = dataclasses.replace(base, name=f"{importance}-{label}", out_dir=str(sweep_dir), importance=importance,
                                      target_macs=value if kind == "macs" else 0.0,
                                      target_params=value if kind == "params" else 0.0,
                                      pruning_ratio=value if kind == "ratio" else base.pruning_ratio)
            validate(cfg)
            _check_targets(cfg, model_spec(cfg, cfg.num_classes or 10), cfg.image_size or 32)  # the class count
            # moves dense MACs by a few thousand at most; the image size is checked again by each run
            configs.append(cfg)
    log(f"sweep '{base.name}': {len(configs)} runs -> {sweep_dir}")
    baseline = base.baseline
    for cfg in configs:
        rd = RunDir(sweep_dir / cfg.name)
        if rd.results.is_file():
            log(f"sweep: {cfg.name} already finished")
        elif rd.config.is_file():  # resumed with its own recipe, and this command's runtime settings
            run(dataclasses.replace(open_existing(rd.path)[1], **runtime_settings(cfg)), rd.path)
        else:
            run(dataclasses.replace(cfg, baseline=baseline))
        if not baseline:
            baseline = str(rd.checkpoint(0, cfg.iterative_steps).with_suffix(".safetensors"))
    rows = report.render_sweep(sweep_dir)
    log(f"wrote {sweep_dir}/pareto.md and pareto.png ({len(rows)} runs)")
    return sweep_dir
