"""Tables and plots from the files of a run directory. Reads files only; never re-runs anything. Also the summaries
of what sweep.py and controls.py gather: a control's row, a group of seeds (mean ± std), a sweep's Pareto table.

Figures are drawn on matplotlib.figure.Figure objects directly (no pyplot, no backend switch), so calling
prunelab from a notebook or another program leaves its matplotlib state alone.
"""
from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import modelfile
from .config import CONTROLS, Config, final_lr, to_dict
from .errors import PrunelabError
from .files import read_jsonl, write_atomic, write_json, write_text
from .measurement import BUSY_CORES, find_latency, latency_label, latency_records
from .rundir import RunDir


def build_results(run_dir: str | Path) -> dict:
    """The summary of a finished run, from config.json and metrics.jsonl."""
    rd = RunDir(run_dir)
    config = json.loads(rd.config.read_text())
    rows = read_jsonl(rd.metrics)
    dense = next((r for r in rows if r["event"] == "dense"), None)
    final = next((r for r in rows if r["event"] == "final"), None)
    if dense is None or final is None:
        raise PrunelabError(f"{rd.path} has not finished (no {'dense' if dense is None else 'final'} metrics); "
                            f"finish it with `prunelab run --resume {rd.path}`")
    steps = sorted((r for r in rows if r["event"] == "step"), key=lambda r: r["step"])
    sparse = next((r for r in rows if r["event"] == "sparse"), None)
    epochs = [r for r in rows if r["event"] == "epoch"]
    probe = next((r for r in rows if r["event"] == "lr_probe"), None)
    search = json.loads(rd.search.read_text()) if rd.search.is_file() else None
    widths = _layer_widths(rd)
    targets = [{"stage": r["stage"], **r["distill_targets"]} for r in [*steps, final] if "distill_targets" in r]
    data = {k: dense.get(k) for k in ("data", "train_images", "val_images", "test_images", "train_images_available",
                                      "test_images_available", "test_fingerprint")}
    if dense.get("classes"):
        data["classes"] = len(dense["classes"])
    return {
        "name": config["name"], "config": config,
        "pruning_ratio": dense.get("pruning_ratio", config["pruning_ratio"]),  # found for a target, or the config's
        "budget_vs_seed": budget_differences(config, data),
        "data": data,
        "machine": final.get("machine", dense.get("machine")),
        "dense": _strip(dense), "steps": [_strip(s) for s in steps], "final": _strip(final),
        **({"sparse": _strip(sparse)} if sparse else {}),
        "wall_time_s": {"dense": dense["seconds"], **({"width_search": search["seconds"]} if search else {}),
                        **({"sparse_training": sparse["seconds"]} if sparse else {}),
                        "pruning_steps": sum(s["seconds"] for s in steps), "final_finetune": final["seconds"],
                        "total": dense["seconds"] + (search["seconds"] if search else 0)
                        + (sparse["seconds"] if sparse else 0) + sum(s["seconds"] for s in steps) + final["seconds"]},
        **({"search": _search_summary(search, widths)} if search else {}),
        **({"distill_targets": targets} if targets else {}),
        **({"lr_probe": {k: v for k, v in probe.items() if k not in ("event", "stage")}} if probe else {}),
        "layer_widths": widths,
        "epochs": [{k: e[k] for k in ("stage", "phase", "epoch", "images", "loss", "train_accuracy", "val_accuracy", "lr",
                                      "images_per_s", "seconds") if k in e} for e in epochs],
        "controls": control_rows(rd.path),
        **({"int8": json.loads(rd.int8_results.read_text())} if rd.int8_results.is_file() else {}),
    }


def refresh(run_dir: str | Path) -> dict:
    """Rebuild a finished run's summary from its files and redraw its report (after a control or INT8 adds rows,
    and at the end of the run): report.md and plots first, results.json last (its presence means complete)."""
    rd = RunDir(run_dir)
    results = build_results(rd.path)
    render(rd.path, results)
    write_json(rd.results, results)
    return results


def _layer_widths(rd: RunDir) -> dict:
    """Output channels of every convolution in the run's dense and final models (from their JSON descriptions)."""
    return {stage: modelfile.describe(rd.model_file(stage))[0]["layer_widths"] for stage in ("dense", "final")}


def _search_summary(search: dict, widths: dict) -> dict:
    """The width search as the report shows it: uniform allocation (candidate 0) against the chosen candidate, and
    the widths of every layer in the dense, uniform, searched (one-shot) and final models."""
    uniform = search["candidates"][0]
    keys = ("index", "proxy_accuracy", "macs", "params", "widths")
    return {"chosen": {**{k: search.get(k) for k in keys}, **{k: search[k] for k in ("latency_ms", "target_ms")
                                                               if k in search}},
            "uniform": {**{k: uniform.get(k) for k in keys},
                        **({"latency_ms": uniform["latency_ms"]} if "latency_ms" in uniform else {})},
            "candidates": len(search["candidates"]), "feasible": sum(c["feasible"] for c in search["candidates"]),
            "seconds": search["seconds"], **({"other_cores": search["other_cores"]} if "other_cores" in search else {}),
            "dense_widths": widths["dense"], "final_widths": widths["final"]}


def search_markdown(results: dict) -> str:
    """The searched widths beside uniform allocation's, layer by layer."""
    s = results["search"]
    u, c = s["uniform"], s["chosen"]

    def acc(row):
        return f"{100 * row['proxy_accuracy']:.2f}%" if row.get("proxy_accuracy") is not None else "(cannot reach)"

    def ms(row):
        return f"{row['latency_ms']:.3g}" if row.get("latency_ms") is not None else ""
    timed = "latency_ms" in c  # a latency or speed-up target: every candidate was timed (the final model always is)
    tuned = results["config"].get("search_train_images")
    lines = [f"{s['candidates']} candidates scored ({s['feasible']} could meet the target) in {s['seconds']:.0f} s; "
             f"proxy: one-shot pruning of the dense model, batch-norm statistics re-estimated on training images, "
             + (f"a fine-tune on {tuned:,} training images, " if tuned else "")
             + f"accuracy on the validation split. Chosen: candidate {c['index']}"
             + (" (uniform allocation)" if c["index"] == 0 else "") + ".", "",
             "| | proxy accuracy (val) | MACs | params |" + (" latency (ms) |" if timed else ""),
             "| :--- | ---: | ---: | ---: |" + (" ---: |" if timed else ""),
             f"| uniform allocation | {acc(u)} | {_fmt_count(u['macs']) if u.get('macs') else ''} | "
             f"{_fmt_count(u['params']) if u.get('params') else ''} |" + (f" {ms(u)} |" if timed else ""),
             f"| searched (candidate {c['index']}) | {acc(c)} | {_fmt_count(c['macs'])} | {_fmt_count(c['params'])} |"
             + (f" {ms(c)} |" if timed else ""),
             "", "| layer | dense | uniform | searched | final model |", "| :--- | ---: | ---: | ---: | ---: |"]
    for name, width in s["dense_widths"].items():
        lines.append(f"| {name} | {width} | {(u.get('widths') or {}).get(name, '')} | {c['widths'].get(name, '')} | "
                     f"{s['final_widths'].get(name, '')} |")
    return "\n".join(lines)


def widths_markdown(results: dict) -> str:
    """Output channels of every layer, dense and final: the architecture the run ended with (a width search's
    section shows these beside uniform's and the searched widths instead)."""
    w = results["layer_widths"]
    lines = ["| layer | dense | final model |", "| :--- | ---: | ---: |"]
    lines += [f"| {name} | {width} | {w['final'].get(name, 'removed')} |" for name, width in w["dense"].items()]
    return "\n".join(lines)


def int8_markdown(results: dict) -> str:
    """Dense, pruned FP32 and pruned INT8 side by side (INT8 and FP32 both in the runtime that quantised)."""
    q, d = results["int8"], results["dense"]
    runtime = q.get("runtime", "onnxruntime")
    label = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}.get(runtime, runtime)
    sizes = sorted({r["batch_size"] for r in q["models"]["fp32"]["latency"]})
    head = "| model | test accuracy | file (MB) | " + " | ".join(f"{label} CPU b{b} (ms)" for b in sizes) + " |"
    lines = [head, "| :--- | ---: | ---: |" + " ---: |" * len(sizes)]

    def lat(row, b):
        v = find_latency(row, "cpu", b, runtime)
        return f"{v:.3f}" if v is not None else ""
    lines.append(f"| dense (PyTorch file) | {100 * d['accuracy']:.2f}% | {d.get('file_size_bytes', 0) / 1e6:.2f} | "
                 + " | ".join(lat(d, b) for b in sizes) + " |")
    for name in ("fp32", "int8"):
        m = q["models"][name]
        lines.append(f"| pruned {name.upper()} ({label}) | {100 * m['accuracy']:.2f}% | {m['file_size_bytes'] / 1e6:.3f} | "
                     + " | ".join(lat(m, b) for b in sizes) + " |")
    f32, i8 = q["models"]["fp32"], q["models"]["int8"]
    speed = [f"b{b} {find_latency(f32, 'cpu', b, runtime) / find_latency(i8, 'cpu', b, runtime):.2f}x" for b in sizes]
    how = ("NNCF (nncf.quantize, default preset: symmetric int8, per-channel weights)" if runtime == "openvino" else
           "static, QDQ, per-channel int8 weights, uint8 activations")
    lines += ["", f"INT8: {how}, calibrated on {q['calibration_images']} training images; accuracy on "
              f"{q['test_images']} test images in {label}. INT8 vs FP32: "
              f"{100 * (i8['accuracy'] - f32['accuracy']):+.2f} pts, speed {', '.join(speed)}."]
    return "\n".join(lines)


CONTROL_WORDS = {
    "scratch": "the pruned architecture, re-initialised at random and trained from scratch",
    "scratch-long": "the same from scratch, on the images of the dense training and the fine-tune together",
    "random": "the same run with the random importance criterion",
}


def controls_markdown(results: dict) -> str:
    """The controls' rows beside the pruned model, with their training budgets."""
    f = results["final"]
    lines = ["| model | test accuracy | vs pruned | MACs | training |", "| :--- | ---: | ---: | ---: | :--- |",
             f"| pruned ({results['config']['importance']}) | {100 * f['accuracy']:.2f}% | | {_fmt_count(f['macs'])} | "
             f"prune-and-fine-tune phase |"]
    for c in results.get("controls") or []:
        if c["control"] in ("scratch", "scratch-long"):
            if c.get("budget") == "time":
                how = f"{counted(c['epochs'], 'epoch')}, {c['train_seconds']:.0f} s for a budget of {c['budget_seconds']:.0f} s"
            else:
                how = f"{counted(c['epochs'], 'epoch')}, {c['train_images']:,} images"
                how += f" for a budget of {c['budget_images']:,}" if "budget_images" in c else ""
            how += f", lr {c['lr']:g}" if "lr" in c else ""
            how += ", distilled from the run's teacher" if c.get("distilled") else ""
        else:
            how = f"{c['train_seconds']:.0f} s, {c['train_images']:,} images after the dense stage"
        lines.append(f"| {c['control']} control: {CONTROL_WORDS.get(c['control'], '')} | {100 * c['accuracy']:.2f}% | "
                     f"{100 * (c['accuracy'] - f['accuracy']):+.2f} pts | {_fmt_count(c['macs'])} | {how} |")
    return "\n".join(lines)


def _strip(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in ("event", "machine", "classes", "data") and
           not k.startswith(("latency_ms_", "latency_p90_ms_"))}
    out["latency"] = latency_records(row)  # nested records, also for run directories of older versions
    return out


def _seed_value(name: str):
    return getattr(Config(), name)


def counted(n: int, singular: str, plural: str = "") -> str:
    """'1 dense epoch', '3 dense epochs'."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def budget_differences(config: dict, data: dict) -> str:
    """Where a run's budget differs from the seed recipe's, in words ("10,000 training images (of 50,000), 5 dense
    epochs (seed: 10)"), from its resolved config and the data it saw; "" when it is the seed's budget."""
    parts = []
    for what, used, available in (("training", data.get("train_images"), data.get("train_images_available")),
                                  ("test", data.get("test_images"), data.get("test_images_available"))):
        if used is not None and available and used < available:
            parts.append(f"{used:,} {what} images (of {available:,})")
    if config.get("data_format") == "synthetic":
        parts.append("synthetic data")
    labels = {"epochs": ("dense epoch", "dense epochs"), "iterative_steps": ("pruning step", "pruning steps"),
              "finetune_epochs_per_step": ("fine-tune epoch per step", "fine-tune epochs per step"),
              "final_finetune_epochs": ("final fine-tune epoch", "final fine-tune epochs")}
    for name, label in labels.items():
        if name == "epochs" and config.get("baseline"):
            continue  # no dense training in this run
        if config.get(name) is not None and config[name] != _seed_value(name):
            parts.append(f"{counted(config[name], *label)} (seed: {_seed_value(name)})")
        if name == "epochs" and config.get("early_images") and not config.get("baseline"):
            parts.append(f"the dense model and the fine-tunes between steps see {config['early_images']:,} images per "
                         "epoch (seed: all)")
    return ", ".join(parts)


def dense_budget_sentence(results: dict) -> str:
    """What the dense model cost, so that nobody reads its accuracy as the method's."""
    cfg, data = results["config"], results["data"]
    if cfg.get("baseline"):
        return f"**The dense model** was loaded from `{cfg['baseline']}`, not trained in this run."
    source = ((results.get("dense") or {}).get("transfer") or {}).get("source")
    if source:
        loaded = results["dense"]["transfer"]
        return (f"**The dense model** was fine-tuned from `{source}` ({loaded['loaded']} of {loaded['backbone']} "
                f"backbone tensors loaded, classifier new) for {counted(cfg['epochs'], 'epoch')} "
                f"({results['wall_time_s']['dense']:.0f} s with its evaluation).")
    per_epoch = min(cfg.get("early_images") or data["train_images"], data["train_images"])
    return (f"**The dense model** trained for {counted(cfg['epochs'], 'epoch')} of {per_epoch:,} images ({cfg['epochs'] * per_epoch:,} "
            f"images, {results['wall_time_s']['dense']:.0f} s with its evaluation). Its accuracy is what that budget "
            "buys, not what the architecture can reach; the run's result is the pruned model.")


def recipe_sentence(cfg: Config | dict, pruning_ratio: float | None = None) -> str:
    """One line that says what the run does."""
    c = to_dict(cfg) if isinstance(cfg, Config) else cfg
    ratio = c["pruning_ratio"] if pruning_ratio is None else pruning_ratio
    limits = [f"{c[k]:.4g} {unit}" for k, unit in (("target_macs", "MACs"), ("target_params", "parameters")) if c.get(k)]
    if c.get("target_latency_ms"):
        limits = [f"{c['target_latency_ms']:.4g} ms ({c['latency_runtime']}, batch {c['latency_batch_size']}, latency on "
                  "this machine)"]
    if c.get("target_speedup"):
        limits = [f"{c['target_speedup']:g}x the dense model's speed ({c['latency_runtime']}, batch "
                  f"{c['latency_batch_size']}, both timed on this machine)"]
    # (a width search's u scales its chosen candidate's multipliers: not a channel ratio, so not shown)
    found = pruning_ratio is not None and c.get("allocation") != "search"
    goal = (f"target {' and '.join(limits)}" + (f" (channel ratio found: {ratio:.4f})" if found else "")
            if limits else f"channel ratio {ratio}")
    per_unit = f"cosine stepped per {c.get('lr_schedule_unit', 'batch')}"
    early = f" on {c['early_images']:,} images" if c.get("early_images") else ""
    start = (f" from {'pretrained weights ' + c['pretrained'] if c.get('pretrained') else c.get('init_from')}"
             + (f", classifier lr {c['head_lr']}" if c.get("head_lr") else "")
             if c.get("pretrained") or c.get("init_from") else "")
    dense = (f"baseline {c['baseline']}" if c.get("baseline")
             else f"{counted(c['epochs'], 'dense epoch')}{early} (lr {c['lr']}{start})")
    fill = ("" if not c.get("fill_budget", False) or not (c.get("target_macs") or c.get("target_params")) else
            "tilted and widened to spend what the budget leaves idle" if c.get("target_macs") and c.get("target_params")
            and c.get("allocation") == "search" else "widened into what rounding leaves of the budget")
    if c["global_pruning"] or c.get("allocation") == "global":
        allocation = "global"
    elif c.get("allocation") == "search":
        allocation = f"widths searched ({c['search_budget']} candidates{', each ' + fill if fill else ''})"
    else:
        allocation = "per-layer" + (f", {fill}" if fill else "")
    depth = f"blocks {' '.join(c['drop_blocks'])} removed, then " if c.get("drop_blocks") else ""
    return (f"{c['model']}, {dense}; {depth}{c['importance']} importance, {allocation}, "
            f"{goal} in {counted(c['iterative_steps'], c.get('schedule', 'linear') + ' step')}; "
            + (f"batch-norm statistics re-estimated on {c['bn_reestimate_images']:,} images after each step and "
               "training stage; "
               if c.get("bn_reestimate_images") else "")
            + (f"each cut's units refitted to the model before it on up to {c['reconstruct_images']:,} images "
               f"({c.get('reconstruct_steps', 300)} steps each); " if c.get("reconstruct_images") else "")
            + f"{counted(c['finetune_epochs_per_step'], 'fine-tune epoch')} per step{early} (lr {c.get('finetune_lr', 0.1)}), "
            f"{counted(c['final_finetune_epochs'], 'final epoch')} (lr "
            + (f"chosen among {', '.join(f'{r:g}' for r in c['lr_probe'])} on the validation split"
               if c.get("lr_probe") else f"{final_lr(c)}") + f"); batch {c['batch_size']}, {per_unit}"
            + (f"; cutout {c['cutout_px']} px" if c.get("cutout_px") else "")
            + (f"; distillation T={c['distill_temperature']} w={c['distill_weight']}" if c.get("distill") else "")
            + (f" from teacher {c['teacher']}" if c.get("teacher") else "")
            + ((f", its outputs on {c['distill_views']} fixed views per image replayed" if c.get("distill_views")
                else ", its outputs cached once per image") if c.get("distill") and c.get("distill_cached") else ""))


def _fmt_count(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _lat_settings(row: dict) -> list[tuple]:
    return [(r["runtime"], r["device"], r["batch_size"]) for r in row["latency"]]


def busy_markdown(results: dict) -> list[str]:
    """A warning paragraph where other processes kept BUSY_CORES or more CPU cores busy while the latency target was
    timed (the search, the width search, the final timing): those latencies hold for a machine that busy."""
    timed = {"while the target was searched for": (results["dense"].get("latency_search") or {}).get("other_cores"),
             "during the width search": (results.get("search") or {}).get("other_cores"),
             "while the final model was timed": results["final"].get("target_latency", {}).get("other_cores")}
    busy = [f"{cores:.1f} cores {when}" for when, cores in timed.items() if cores is not None and cores >= BUSY_CORES]
    if not busy:
        return []
    return ["", f"**Warning: a busy machine.** Other processes kept CPU cores busy ({'; '.join(busy)}): these "
            "latencies hold for a machine that busy, not a quiet one, and small models slow down less than the dense "
            "one under load (RESULTS 7.12). For a latency or speed-up target, run on a quiet machine."]


def validation_seen(dense: dict, trained_here: bool) -> str:
    """A warning where the dense model scores higher on the validation split than on the test set by more than three
    standard errors of the difference (two independent samples of one accuracy, pooled). A dense model from outside
    the run (`trained_here` False: --baseline, a given module) has most likely trained on those images, and
    validation accuracy then favours whatever stays close to it; one trained here never saw them, so the test images
    differ from the training ones. "" where the gap is within the limit, or the run has no validation split."""
    if "val_accuracy" not in dense or not dense.get("val_images") or not dense.get("test_images"):
        return ""
    val, test, n_val, n_test = dense["val_accuracy"], dense["accuracy"], dense["val_images"], dense["test_images"]
    p = (val * n_val + test * n_test) / (n_val + n_test)
    limit = 3 * (p * (1 - p) * (1 / n_val + 1 / n_test)) ** 0.5
    if val - test <= limit:
        return ""
    scores = (f"the dense model scores {100 * val:.2f}% on the {n_val:,} validation images but {100 * test:.2f}% on the "
              f"{n_test:,} test images ({100 * (val - test):.2f} points, more than three standard errors: "
              f"{100 * limit:.2f})")
    if trained_here:
        return (f"{scores}. It never trained on the validation images, so the test images differ from the training "
                "ones: validation accuracy overstates what the test set shows")
    return (f"{scores}. It has probably trained on the validation images, so validation accuracy favours settings that "
            "keep the pruned model close to the dense one, distillation from it most (RESULTS 7.25). To compare "
            "settings fairly, validate on images it never trained on: let prunelab train it (no --baseline), or train "
            "it without this split (the same --val-size and --val-seed, or --seed)")


NEAR_CHANCE = 0.1  # a cut that leaves a model this share of the way from chance to its dense accuracy, or less, broke it
SHORT_FINETUNE = 2  # epochs after the last cut up to which a reconstruction was measured against one more (RESULTS 7.35)


HIGHER_LR = 0.04  # the final rate at which a briefly trained MobileNetV3 gained 2.4 points over 0.01 (RESULTS 7.36)


def reconstruction_tip(step: dict, dense: dict, classes: int, epochs_after: int, lr: float, lr_flag: str) -> str:
    """Advice where the last cut (`step`, its row: fresh batch-norm statistics, no reconstruction) left the model at
    most NEAR_CHANCE of the way from chance (1 / `classes`) to the dense model's accuracy (`dense`, its row), and at
    most SHORT_FINETUNE epochs over the whole training split follow it at rate `lr` (set by `lr_flag`). There, at
    rate 0.01 (the trained presets' until RESULTS 7.38), a reconstruction first did as well as one more epoch in the
    same time or better (RESULTS 7.35);
    at each recipe's best rate it led on ResNet-18 at 105x and tied on a MobileNetV3 whose plain epochs gained 2.4
    points at HIGHER_LR, and at 0.1 it lost 3.4 points (7.36): so below HIGHER_LR the advice names the rate too, and
    above it there is none. It chooses a recipe, so it reads the validation split where both rows carry one, the test
    set only where there is nothing else. "" otherwise, and where the dense model is not 10 points above chance."""
    on_val = "val_accuracy_before_finetune" in step and "val_accuracy" in dense
    fresh = step.get("val_accuracy_before_finetune" if on_val else "accuracy_before_finetune")
    dense_acc = dense.get("val_accuracy" if on_val else "accuracy")
    chance = 1 / classes if classes >= 2 else None
    if ("accuracy_stale_bn" not in step or "reconstruction" in step or fresh is None or dense_acc is None
            or chance is None or dense_acc - chance < 0.1 or fresh - chance > NEAR_CHANCE * (dense_acc - chance)
            or epochs_after > SHORT_FINETUNE or (epochs_after and lr > HIGHER_LR)):
        return ""
    split = "the validation split" if on_val else "the test images (no validation figures for this run)"
    probed = lr_flag == "--lr-probe"  # (then `lr` is the highest rate the probe may choose)
    rate = (f"; and the rate matters as much: the fine-tune runs at lr {'at most ' if probed else ''}{lr:g}, and a "
            f"briefly trained MobileNetV3 gained 2.4 points from 3 epochs at {HIGHER_LR:g} instead of 0.01, where the "
            "reconstruction then only tied ("
            + (f"add {HIGHER_LR:g} to {lr_flag}" if probed else
               f"try {lr_flag} {HIGHER_LR:g}, or let --lr-probe 0.01 0.02 {HIGHER_LR:g} choose on the validation split")
            + "; RESULTS 7.36, 7.37)" if epochs_after and lr < HIGHER_LR else "")
    return (f"the last cut left the model at {100 * fresh:.2f}% on {split} with fresh batch-norm statistics "
            f"(chance: {100 * chance:.2f}%, the dense model {100 * dense_acc:.2f}%), and "
            f"{counted(epochs_after, 'epoch')} of fine-tune follow it. Where a cut breaks a model this far and the "
            "fine-tune is this short, refitting each unit (stem, block, classifier) to the model before the cut first "
            "(--reconstruct-images 2560) did as well as one more epoch in the same time, and on ResNet-18 cut to the "
            f"seed's size 0.4-1.4 points better (RESULTS 7.35, 7.36){rate}")


def finetune_after_last_cut(cfg: dict) -> tuple[int, float, str]:
    """Epochs over the whole training split after the last cut (the final fine-tune's, and the last step's own where
    it trains on all images, not on early_images), and the rate the advice names with the flag that sets it: the
    final fine-tune's where it has epochs (with lr_probe, the highest it may choose), else the steps'."""
    step_epochs = 0 if cfg.get("early_images") else cfg["finetune_epochs_per_step"]
    if cfg["final_finetune_epochs"]:
        if cfg.get("lr_probe"):
            return cfg["final_finetune_epochs"] + step_epochs, max(cfg["lr_probe"]), "--lr-probe"
        return cfg["final_finetune_epochs"] + step_epochs, final_lr(cfg), "--final-finetune-lr"
    return step_epochs, cfg.get("finetune_lr", 0.1), "--finetune-lr"


def key_results_markdown(results: dict) -> str:
    """The seed's Key Results table: original, pruned, change."""
    d, f = results["dense"], results["final"]
    lines = ["| Metric | Original model | Pruned model | Change |", "| :--- | :---: | :---: | :---: |",
             f"| Accuracy (test) | {100 * d['accuracy']:.2f}% | **{100 * f['accuracy']:.2f}%** | "
             f"{100 * (f['accuracy'] - d['accuracy']):+.2f} pts |"]
    for key, label in (("params", "Parameters"), ("macs", "MACs")):
        lines.append(f"| {label} | {_fmt_count(d[key])} | **{_fmt_count(f[key])}** | "
                     f"{100 * (f[key] / d[key] - 1):+.1f}% ({d[key] / f[key]:.0f}x fewer) |")
    for r in f["latency"]:
        before = find_latency(d, r["device"], r["batch_size"], r["runtime"])
        if before is not None:
            lines.append(f"| Latency {latency_label(r)} | {before:.2f} ms | **{r['median_ms']:.2f} ms** | "
                         f"{before / r['median_ms']:.1f}x faster |")
    if "file_size_bytes" in d and "file_size_bytes" in f:
        lines.append(f"| File size (safetensors) | {d['file_size_bytes'] / 1e6:.2f} MB | "
                     f"**{f['file_size_bytes'] / 1e6:.3f} MB** | {d['file_size_bytes'] / f['file_size_bytes']:.0f}x smaller |")
    return "\n".join(lines)


def steps_markdown(results: dict) -> str:
    rows = [results["dense"], *([results["sparse"]] if results.get("sparse") else []), *results["steps"], results["final"]]
    settings = _lat_settings(results["final"])
    stale = any("accuracy_stale_bn" in r for r in rows)  # batch-norm statistics re-estimated after each cut
    rebuilt = any("accuracy_before_reconstruction" in r for r in rows)  # each cut followed by a reconstruction
    head = ["Stage", "Channel ratio", *(["Acc. after cut (stale BN)"] if stale else []),
            *([f"Acc. after cut{' (fresh BN)' if stale else ''}"] if rebuilt else []),
            "Acc. before FT" + (" (reconstructed)" if rebuilt else " (fresh BN)" if stale else ""), "Acc. after FT",
            "Params", "MACs",
            *[latency_label({"runtime": rt, "device": dv, "batch_size": b}) + " (ms)" for rt, dv, b in settings],
            "Wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for r in rows:
        stage = ("dense" if r["stage"] == 0 else "sparse training" if r["stage"] == -1 else
                 "final" if "step" not in r else f"step {r['step']}")
        before = f"{100 * r['accuracy_before_finetune']:.2f}%" if "accuracy_before_finetune" in r else ""
        lats = [find_latency(r, dv, b, rt) for rt, dv, b in settings]
        cut = [f"{100 * r['accuracy_stale_bn']:.2f}%" if "accuracy_stale_bn" in r else ""] if stale else []
        if rebuilt:
            cut.append(f"{100 * r['accuracy_before_reconstruction']:.2f}%" if "accuracy_before_reconstruction" in r
                       else "")
        lines.append("| " + " | ".join([stage, f"{r['ratio']:.3f}", *cut, before, f"{100 * r['accuracy']:.2f}%",
                                        _fmt_count(r["params"]), _fmt_count(r["macs"]),
                                        *[f"{v:.2f}" if v is not None else "" for v in lats],
                                        f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


TRAINING_PRECISION_WORDS = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "fp32": "fp32"}


def _found(results: dict) -> str:
    """What the run found for its target: a channel ratio, or (a width search) the candidate it chose."""
    chosen = (results.get("search") or {}).get("chosen")
    return (f"the width search chose candidate {chosen['index']}" if chosen
            else f"channel ratio found: {results.get('pruning_ratio', 0):.4f}")


def report_markdown(results: dict) -> str:
    cfg, m, w = results["config"], results.get("machine") or {}, results["wall_time_s"]
    budget = results.get("budget_vs_seed", "")
    parts = [
        f"# prunelab run `{results['name']}`", "",
        f"Recipe: {recipe_sentence(cfg, results.get('pruning_ratio'))}. Channel ratio reached: "
        f"{results['final']['ratio']:.4f}.", "",
        f"Data: {results['data']['data']} ({results['data']['train_images']} training, "
        f"{results['data']['test_images']} test images).",
    ]
    if budget:
        parts += ["", f"**Budget against the seed recipe:** {budget}."]
    parts += ["", dense_budget_sentence(results)]
    seen = validation_seen(results["dense"], trained_here=any(e["phase"] == "dense" for e in results["epochs"]))
    if seen:
        parts += ["", f"**Warning: validation accuracy above test accuracy.** {seen[0].upper()}{seen[1:]}."]
    tip = reconstruction_tip(results["steps"][-1], results["dense"], results["data"].get("classes") or 0,
                             *finetune_after_last_cut(cfg)) if results["steps"] else ""
    if tip:
        parts += ["", f"**Tip: reconstruction.** {tip[0].upper()}{tip[1:]}."]
    teacher = results["dense"].get("teacher")
    if teacher:
        parts += ["", f"**Teacher:** the fine-tunes distil from {teacher['file']}, {100 * teacher['accuracy']:.2f}% on "
                  f"these test images (the dense model: {100 * results['dense']['accuracy']:.2f}%)."]
    probe = results.get("lr_probe")
    if probe:
        parts += ["", f"**Learning rate:** the final fine-tune ran at **{probe['chosen']:g}**, the best on the "
                  f"validation split after one pass over {probe['images']:,} training images at each rate ("
                  + ", ".join(f"{r:g}: {100 * a:.2f}%" for r, a in zip(probe["rates"], probe["val_accuracy"]))
                  + f"; {probe['seconds']:.0f} s, counted in the final fine-tune's time). So short a fine-tune favours "
                  "low rates over the whole fine-tune's best (RESULTS 7.37)."]
    t = results["final"].get("target_latency")
    if t and t.get("target_speedup"):
        search = results["dense"].get("latency_search") or (results.get("search") or {}).get("chosen") or {}
        parts += ["", f"**Latency target:** {t['target_speedup']:g}x the dense model's speed per batch of "
                  f"{t['batch_size']} in {t['runtime']}; timed side by side at the end (medians of fresh sessions), "
                  f"the final model runs in **{t['achieved_ms']:.3g} ms** against the dense model's "
                  f"{t['dense_ms']:.3g} ms: **{t['achieved_speedup']:.2f}x** ({_found(results)}, for "
                  f"{search.get('target_ms', float('nan')):.3g} ms in the search)."]
    elif t:
        search = results["dense"].get("latency_search")  # (the ratio's search; a width search times no dense model)
        parts += ["", f"**Latency target:** {t['target_ms']:g} ms per batch of {t['batch_size']} in {t['runtime']}; "
                  f"the final model runs in **{t['achieved_ms']:.3g} ms** ({_found(results)}"
                  + (f"; dense {search['dense_latency_ms']:.3g} ms; timing noise measured on this machine: "
                     f"{100 * search['noise']:.1f}%" if search else "") + ")."]
    if t:
        parts += busy_markdown(results)
    parts += ["", "## Key results", "", key_results_markdown(results), "",
              "Latency: fp32 forward pass in eval mode, median of timed runs after warm-up, "
              + (counted(m["torch_threads"], "CPU thread") if "torch_threads" in m else "? CPU threads")
              + (f", GPU {m['gpu']}" if m.get("gpu") else "") + ".", "",
              "![results](results.png)", "", "![training curves](curves.png)", "", "![first-layer filters](filters.png)", "",
              *(["## Width search", "", search_markdown(results), ""] if results.get("search") else
                ["## Architecture", "", "Output channels of each layer.", "", widths_markdown(results), ""]
                if results.get("layer_widths") else []),
              *(["## INT8", "", int8_markdown(results), ""] if results.get("int8") else []),
              *(["## Controls", "", controls_markdown(results), "",
                 "One seed each: whether a difference exceeds the spread between seeds needs `--seeds` "
                 "(seeds.md).", ""] if results.get("controls") else []),
              "## Every stage", "", steps_markdown(results), "",
              f"Wall time: dense {w['dense']:.0f} s, "
              + (f"width search {w['width_search']:.0f} s, " if "width_search" in w else "")
              + (f"sparse training {w['sparse_training']:.0f} s, " if "sparse_training" in w else "")
              + f"pruning steps {w['pruning_steps']:.0f} s, "
              f"final fine-tune {w['final_finetune']:.0f} s, total {w['total']:.0f} s."
              + "".join(targets_sentence(t) for t in results.get("distill_targets", [])), "",
              f"Machine: {m.get('processor', '?')}"
              + ({True: " (with bf16)", False: " (no bf16)"}.get(m.get("cpu_bf16"), "")
                 if not m.get("gpu") else "")
              + f", {m.get('cpu_count', '?')} CPUs, {m.get('platform', '?')}, "
              f"torch {m.get('torch', '?')}" + (f", {m['gpu']}" if m.get("gpu") else "")
              + (f"; trained in {TRAINING_PRECISION_WORDS.get(m['training_precision'], m['training_precision'])}"
                 if m.get("training_precision") else "") + ".", ""]
    return "\n".join(parts)


def targets_sentence(t: dict) -> str:
    """Where a stage's cached distillation targets came from, and whether the teacher's time is in the wall time."""
    if t["hit"]:
        return (f" The teacher's outputs (stage {t['stage']}) were read from the cache {t['cache']}: the "
                f"{t['seconds']:.0f} s of teacher passes they took in the run that wrote them are not in this total.")
    return f" The teacher's outputs (stage {t['stage']}) took {t['seconds']:.0f} s of teacher passes, inside this total."


def _save(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    write_atomic(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))


def plot(results: dict, path: str | Path) -> None:
    """The seed's figure, every point from results: accuracy, size and latency against the channel ratio,
    and original-vs-pruned bars for accuracy, parameters, MACs and latency."""
    d, steps, f = results["dense"], results["steps"], results["final"]
    ratios = [0.0] + [s["ratio"] for s in steps]
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 12)
    ax_acc, ax_size, ax_lat = (fig.add_subplot(grid[0, i * 4:(i + 1) * 4]) for i in range(3))

    if any("accuracy_stale_bn" in s for s in steps):
        ax_acc.plot([s["ratio"] for s in steps], [100 * s.get("accuracy_stale_bn", float("nan")) for s in steps], "x:",
                    color="tab:orange", label="after pruning, stale batch-norm statistics")
    ax_acc.plot([s["ratio"] for s in steps], [100 * s["accuracy_before_finetune"] for s in steps], "o--",
                color="tab:red", label="after pruning, before fine-tune")
    ax_acc.plot(ratios, [100 * d["accuracy"]] + [100 * s["accuracy"] for s in steps], "o-", color="tab:blue",
                label="after fine-tune")
    ax_acc.plot([f["ratio"]], [100 * f["accuracy"]], "*", ms=14, color="tab:green", label="after final fine-tune")
    for c in results.get("controls") or []:
        ax_acc.plot([f["ratio"]], [100 * c["accuracy"]], {"scratch": "X", "scratch-long": "P", "random": "^"}.get(c["control"], "o"), ms=10,
                    linestyle="none",
                    label=f"{c['control']} control")
    ax_acc.set(xlabel="channel pruning ratio", ylabel="test accuracy (%)", title="Accuracy")
    ax_acc.legend(fontsize=8)

    ax_size.plot(ratios, [d["params"] / 1e6] + [s["params"] / 1e6 for s in steps], "o-", label="parameters (M)")
    ax_size.plot(ratios, [d["macs"] / 1e6] + [s["macs"] / 1e6 for s in steps], "s-", label="MACs (M)")
    ax_size.set(xlabel="channel pruning ratio", ylabel="millions (log scale)", yscale="log", title="Size and compute")
    ax_size.legend(fontsize=8)

    settings = _lat_settings(d)
    for rt, dv, b in settings:
        pts = [(r, find_latency(row, dv, b, rt)) for r, row in zip(ratios, [d] + steps)]
        pts = [(r, v) for r, v in pts if v is not None]
        ax_lat.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                    label=latency_label({"runtime": rt, "device": dv, "batch_size": b}))
    ax_lat.set(xlabel="channel pruning ratio", ylabel="ms (log scale)", yscale="log", title="Latency (median)")
    ax_lat.legend(fontsize=8)

    bars = [(lambda row: row["accuracy"], "Accuracy (%)", 100), (lambda row: row["params"], "Parameters (M)", 1e-6),
            (lambda row: row["macs"], "MACs (M)", 1e-6)]
    if settings and find_latency(f, settings[-1][1], settings[-1][2], settings[-1][0]) is not None:
        last = settings[-1]
        bars.append((lambda row: find_latency(row, last[1], last[2], last[0]),
                     latency_label({"runtime": last[0], "device": last[1], "batch_size": last[2]}) + " (ms)", 1))
    for i, (get, label, scale) in enumerate(bars):
        ax = fig.add_subplot(grid[1, i * 3:(i + 1) * 3])
        vals = [get(d) * scale, get(f) * scale]
        b = ax.bar(["original", "pruned"], vals, color=["tab:gray", "tab:green"])
        ax.bar_label(b, labels=[f"{v:.3g}" for v in vals])
        ax.set_title(label)
        ax.margins(y=0.15)
    fig.suptitle(f"prunelab run '{results['name']}': {results['config']['model']}, "
                 f"{results['config']['importance']} importance, {counted(len(steps), 'step')}")
    _save(fig, path)


def plot_curves(results: dict, path: str | Path) -> None:
    """Training curves: loss and accuracy per epoch of the dense training and of the final fine-tune."""
    final_stage = results["final"]["stage"]
    phases = [("dense training", [e for e in results["epochs"] if e["stage"] == 0]),
              ("sparse training", [e for e in results["epochs"] if e["stage"] == -1]),
              ("final fine-tune", [e for e in results["epochs"] if e["stage"] == final_stage])]
    phases = [(name, rows) for name, rows in phases if rows]
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for name, rows in phases:
        epochs = [e["epoch"] for e in rows]
        axes[0].plot(epochs, [e["loss"] for e in rows], "o-", label=name)
        axes[1].plot(epochs, [100 * e["train_accuracy"] for e in rows], "o-", label=f"{name}: train")
        if all("val_accuracy" in e for e in rows):
            axes[1].plot(epochs, [100 * e["val_accuracy"] for e in rows], "s--", label=f"{name}: validation")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="Loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy (train: augmented batches, as trained)")
    for ax in axes:
        if phases:  # (a legend with nothing in it is a matplotlib warning in the user's terminal)
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not phases:
        fig.text(0.5, 0.5, "no training epochs in this run (baseline loaded, no final fine-tune)", ha="center")
    _save(fig, path)


def _mosaic(weights, cols: int, gap: int = 1):
    """Filters (out x 3 x k x k) as one RGB image: each scaled to [0, 1] on its own, `cols` to a row, white
    gaps between them (one image instead of a subplot per filter: the same picture, drawn ~6x faster here)."""
    import numpy as np
    n, _, kh, kw = weights.shape
    rows = -(-n // cols)
    canvas = np.ones((rows * (kh + gap) - gap, cols * (kw + gap) - gap, 3))
    for i, w in enumerate(weights):
        w = w.transpose(1, 2, 0)
        r, c = divmod(i, cols)
        canvas[r * (kh + gap):r * (kh + gap) + kh, c * (kw + gap):c * (kw + gap) + kw] = \
            (w - w.min()) / (w.max() - w.min() + 1e-12)
    return canvas


def plot_filters(run_dir: Path, path: str | Path) -> None:
    """The first convolution's filters, dense and pruned (after fine-tuning), as small RGB images (up to 64)."""
    def first_conv(name: str):
        path = RunDir(run_dir).model_file(name)
        layer = next(iter(modelfile.describe(path)[0]["layer_widths"]))  # in module order
        return layer, modelfile.read_tensor(path, f"{layer}.weight")  # out x in x k x k

    layer, dense = first_conv("dense")
    _, pruned = first_conv("final")
    if dense.shape[1] != 3:  # the first convolution does not see RGB (a grouped or unusual stem): draw channel 0
        dense, pruned = dense[:, :1].repeat(3, axis=1), pruned[:, :1].repeat(3, axis=1)
    dense, pruned = dense[:64], pruned[:64]
    fig = Figure(figsize=(12, 5), layout="constrained")
    subfigs = fig.subfigures(1, 2, width_ratios=[2, 1])
    for sub, weights, title in ((subfigs[0], dense, f"dense: {len(dense)} filters"),
                                (subfigs[1], pruned, f"pruned and fine-tuned: {len(pruned)} filters")):
        ax = sub.subplots()
        ax.axis("off")
        ax.imshow(_mosaic(weights, cols=8 if len(weights) > 16 else min(len(weights), 6)), interpolation="nearest")
        sub.suptitle(title)
    fig.suptitle(f"First convolution ({layer}) filters, run '{Path(run_dir).name}'")
    _save(fig, path, dpi=100)


def render(run_dir: str | Path, results: dict | None = None) -> None:
    """Write report.md and results.png of a finished run from its results (by default its results.json)."""
    rd = RunDir(run_dir)
    if results is None and not rd.results.is_file():
        if not rd.config.is_file():
            raise PrunelabError(f"{rd.path} is not a prunelab run directory (no config.json)")
        raise PrunelabError(f"{rd.path} has no results.json: the run has not finished; "
                            f"finish it with `prunelab run --resume {rd.path}`")
    if results is None:
        results = json.loads(rd.results.read_text())
        for part in ("dense", "final", *range(len(results["steps"]))):  # results.json of older versions
            row = results[part] if isinstance(part, str) else results["steps"][part]
            row["latency"] = latency_records(row)
        results.setdefault("budget_vs_seed", budget_differences(results["config"], results["data"]))
        results.setdefault("layer_widths", _layer_widths(rd))
        if "classes" not in results["data"] and rd.model_file().is_file():
            results["data"]["classes"] = modelfile.describe(rd.model_file())[0].get("num_classes")
        results["controls"] = control_rows(rd.path)  # controls added after the run finished
    plot(results, rd.results_plot)
    plot_curves(results, rd.curves_plot)
    plot_filters(rd.path, rd.filters_plot)
    write_text(rd.report, report_markdown(results))


# Published reference points for the Pareto plot, on the official CIFAR-10 files (not measured here):
# the seed project's pruned ResNet-18 (its README) and small networks trained from scratch, as cited in
# prunelab's "beat the seed" issue. Marked as such on the plot.
REFERENCES = [
    {"name": "seed project (pruned ResNet-18, published)", "macs": 5.29e6, "accuracy": 0.8470},
    {"name": "ShuffleNetV2-0.5 from scratch (published)", "macs": 10.9e6, "accuracy": 0.901},
    {"name": "ResNet-8 from scratch (published, approx.)", "macs": 12.5e6, "accuracy": 0.85},
]


def sweep_rows(sweep_dir: str | Path) -> list[dict]:
    """One row per finished run under sweep_dir: its recipe, accuracy and cost, its seed group (the run name
    without its -s<seed> suffix) and its controls' accuracies."""
    import re

    rows = []
    for results_path in sorted(Path(sweep_dir).glob("*/results.json")):
        r = json.loads(results_path.read_text())
        c, f, d = r["config"], r["final"], r["dense"]
        controls = control_rows(results_path.parent)
        rows.append({"run": r["name"], "group": re.sub(r"-s\d+$", "", r["name"]), "seed": c["seed"],
                     "importance": c["importance"], "global": c["global_pruning"],
                     "allocation": "global" if c["global_pruning"] else c.get("allocation", "uniform"),
                     "round_to": c.get("round_to"), "dropped_blocks": c.get("drop_blocks") or [],
                     "schedule": c.get("schedule", "linear"), "distill": c.get("distill", False),
                     "pruning_ratio": f["ratio"], "accuracy": f["accuracy"], "macs": f["macs"], "params": f["params"],
                     "dense_accuracy": d["accuracy"], "dense_macs": d["macs"],
                     "latency_ms_cpu_b1": find_latency(f, "cpu", 1), "wall_time_s": r["wall_time_s"]["total"],
                     "distill_targets": r.get("distill_targets", []),
                     "controls": {k["control"]: k["accuracy"] for k in controls},
                     "distilled_controls": [k["control"] for k in controls if k.get("distilled")],
                     "cifar10_like": _cifar10_like(results_path.parent)})
    return rows


def _cifar10_like(run_dir: Path) -> bool:
    """Whether the run's data are 10 classes of 32 px images: only then are the CIFAR-10 references comparable."""
    try:
        desc, _ = modelfile.describe(RunDir(run_dir).model_file("final"))
    except PrunelabError:
        return False
    inputs = modelfile.specs(desc)[1]
    return inputs.image_size == 32 and len(inputs.classes) == 10


def sweep_groups(rows: list[dict]) -> list[dict]:
    """Rows of the same recipe and target over seeds, as one point: mean and std of the accuracy (and of each
    control's), sorted by MACs."""
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for name, members in groups.items():
        first = members[0]
        controls = {}
        for kind in sorted({k for m in members for k in m["controls"]}):
            values = [m["controls"][kind] for m in members if kind in m["controls"]]
            controls[kind] = mean_std(values)
        out.append({**{k: first[k] for k in ("importance", "global", "allocation", "round_to", "dropped_blocks",
                                             "schedule", "distill", "pruning_ratio", "macs", "params",
                                             "dense_accuracy", "dense_macs", "latency_ms_cpu_b1")},
                    "run": name, "seeds": [m["seed"] for m in members],
                    "accuracy_stats": mean_std([m["accuracy"] for m in members]),
                    "accuracy": sum(m["accuracy"] for m in members) / len(members),
                    "wall_time_s": sum(m["wall_time_s"] for m in members) / len(members), "controls": controls,
                    "teacher_cached": any(t["hit"] for m in members for t in m["distill_targets"]),
                    "distilled_controls": sorted({k for m in members for k in m["distilled_controls"]})})
    return sorted(out, key=lambda g: g["macs"])


def teacher_time_sentence(rows: list[dict]) -> str:
    """What a sweep's wall times leave out when distilled runs read the teacher's outputs from the cache: each file's
    teacher passes were paid once, by the run that wrote it (inside its wall time) or by a run outside the sweep;
    and the sweep's runs' total with each file's passes counted once. "" when no run read the cache."""
    files = {}  # cache file -> (teacher seconds, the sweep's run that wrote it or None)
    for r in rows:
        for t in (t for t in r["distill_targets"] if t["cache"]):  # None: computed in the run, not cached
            seconds, writer = files.get(t["cache"], (t["seconds"], None))
            files[t["cache"]] = (seconds, r["run"] if not t["hit"] else writer)
    readers = [r["run"] for r in rows if any(t["hit"] for t in r["distill_targets"])]
    if not readers:
        return ""
    outside = sum(seconds for seconds, writer in files.values() if writer is None)
    paid = "; ".join(f"{seconds:.0f} s " + (f"inside {writer}'s wall time" if writer else "in a run outside this sweep")
                     for seconds, writer in files.values())
    return (f"Wall time (s): {counted(len(readers), 'run')} ({', '.join(readers)}) read the teacher's outputs from "
            f"the cache, so their wall time leaves out the teacher's passes, paid once per file: {paid}. "
            f"All the sweep's runs: {sum(r['wall_time_s'] for r in rows) + outside:.0f} s, each file's teacher "
            f"passes counted once.")


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows not beaten by another row on both accuracy (higher) and MACs (lower), by MACs."""
    front = [r for r in rows if not any(o["accuracy"] >= r["accuracy"] and o["macs"] <= r["macs"] and
                                        (o["accuracy"], o["macs"]) != (r["accuracy"], r["macs"]) for o in rows)]
    return sorted(front, key=lambda r: r["macs"])


def render_sweep(sweep_dir: str | Path) -> list[dict]:
    """pareto.png (accuracy vs MACs, log axis; error bars over seeds; controls as their own series) and pareto.md
    for the finished runs of a sweep. Returns the per-run rows."""
    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)
    if not rows:
        raise PrunelabError(f"{sweep_dir} holds no finished runs (no */results.json); run `prunelab sweep` first")
    groups = sweep_groups(rows)
    front = pareto_front(groups)
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    ax = fig.subplots()
    # fixed colours: a control never shares one with the pruned series or a published point
    pruned_colours = ["tab:blue", "tab:purple", "tab:brown", "tab:pink", "tab:cyan", "tab:olive"]
    legend = []  # handles in the legend's order: pruned, controls, front, dense, then the published points
    for i, imp in enumerate(sorted({g["importance"] for g in groups})):
        pts = [g for g in groups if g["importance"] == imp]
        legend.append(ax.errorbar([g["macs"] / 1e6 for g in pts], [100 * g["accuracy"] for g in pts],
                    yerr=[100 * g["accuracy_stats"]["std"] for g in pts], fmt="o", ms=7, capsize=3,
                    color=pruned_colours[i % len(pruned_colours)], label=f"pruned: {imp}",
                    zorder=3))  # above a control that ties it
    for kind, marker, colour, what in (("scratch", "X", "tab:orange", "same architecture from scratch, as many images"),
                                       ("scratch-long", "P", "tab:green",
                                        "from scratch on the dense training's images too"),
                                       ("random", "^", "tab:red", "random criterion")):
        pts = [g for g in groups if kind in g["controls"]]  # (groups are sorted by MACs: a line joins the series)
        distilled = [g for g in pts if kind in g["distilled_controls"]]
        what += ("" if not distilled else ", distilled from its run's teacher" if len(distilled) == len(pts)
                 else ", some distilled from their run's teacher: pareto.md")
        if pts:
            legend.append(ax.errorbar([g["macs"] / 1e6 for g in pts], [100 * g["controls"][kind]["mean"] for g in pts],
                        yerr=[100 * g["controls"][kind]["std"] for g in pts], fmt=marker + ":", ms=8, lw=1,
                        capsize=3, color=colour, label=f"{kind} control ({what})"))
    legend += ax.plot([g["macs"] / 1e6 for g in front], [100 * g["accuracy"] for g in front], "k--", lw=1,
                      label="Pareto front of the pruned runs")
    dense = rows[0]
    legend.append(ax.scatter([dense["dense_macs"] / 1e6], [100 * dense["dense_accuracy"]], marker="s", color="black",
                             s=60, label="dense model (the sweep's start)"))
    references = REFERENCES if all(r["cifar10_like"] for r in rows) else []
    for ref, marker in zip(references, itertools.cycle(["x", "+", "1", "2", "3", "4"])):  # every reference drawn
        legend.append(ax.scatter([ref["macs"] / 1e6], [100 * ref["accuracy"]], marker=marker, s=80, color="0.45",
                                 label=ref["name"]))
    ax.set(xscale="log", xlabel="MACs per image (millions, log scale)", ylabel="test accuracy (%)",
           title=f"Accuracy vs compute: sweep '{sweep_dir.name}' (data: this run's test set"
                 + ("; references, grey: official CIFAR-10)" if references else ")"))
    fig.legend(handles=legend, loc="outside lower center", ncols=2, fontsize=8)  # below the axes: never over a point
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, sweep_dir / "pareto.png")

    kinds = sorted({k for g in groups for k in g["controls"]})
    lines = [f"# Sweep `{sweep_dir.name}`", "",
             "| run | importance | allocation | blocks removed | round to | schedule | distill | ratio | accuracy | seeds "
             "| MACs | params | CPU b1 (ms) | wall (s) | Pareto |" + "".join(f" {k} control |" for k in kinds),
             "| :--- | :--- | :--- | :--- | ---: | :--- | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"
             + " ---: |" * len(kinds)]

    def acc(stats: dict) -> str:
        return f"{100 * stats['mean']:.2f}%" + (f" ± {100 * stats['std']:.2f}" if stats["n"] > 1 else "")

    for g in groups:
        lat = f"{g['latency_ms_cpu_b1']:.2f}" if g["latency_ms_cpu_b1"] else ""
        lines.append(f"| {g['run']} | {g['importance']} | {g['allocation']} | {' '.join(g['dropped_blocks'])} | "
                     f"{g['round_to'] if g['round_to'] is not None else ''} | {g['schedule']} | "
                     f"{'yes' if g['distill'] else 'no'} | {g['pruning_ratio']:.3f} | {acc(g['accuracy_stats'])} | "
                     f"{len(g['seeds'])} | {_fmt_count(g['macs'])} | {_fmt_count(g['params'])} | {lat} | "
                     f"{g['wall_time_s']:.0f}{' †' if g['teacher_cached'] else ''} | {'*' if g in front else ''} |"
                     + "".join(f" {acc(g['controls'][k]) if k in g['controls'] else ''} |" for k in kinds))
    comparisons = [f"- {g['run']} vs its {k} control"
                   f"{' (distilled from the same teacher)' if k in g['distilled_controls'] else ''}: "
                   f"{compare(g['accuracy_stats'], g['controls'][k])}"
                   for g in groups for k in kinds if k in g["controls"]]
    cached = teacher_time_sentence(rows)
    lines += ["", "Accuracy: mean ± standard deviation over seeds where there are several; wall time: mean per run"
              + (" († the teacher's outputs read from the cache, see below)." if cached else "."),
              *(["", cached] if cached else []),
              *(["", *comparisons] if comparisons else []), "",
              f"Dense model: {100 * dense['dense_accuracy']:.2f}% at {_fmt_count(dense['dense_macs'])} MACs.", "",
              *(["References (published on the official CIFAR-10 files, not measured here): "
                 + "; ".join(f"{r['name']}: {100 * r['accuracy']:.1f}% at {_fmt_count(r['macs'])} MACs"
                             for r in references) + ".", ""] if references else []),
              "![pareto](pareto.png)", ""]
    write_text(sweep_dir / "pareto.md", "\n".join(lines))
    return rows


# ----------------------------------------------------------------------------- controls and seeds

def control_row(rd: RunDir) -> dict:
    """The result row of a finished control's run directory: the scratch control's results.json is its row; the
    random control's is a run's summary, whose epochs after the dense stage are its training (each epoch row
    counts the images it trained on; results of older versions, without them, count whole training splits)."""
    results = json.loads(rd.results.read_text()) if rd.results.is_file() else \
        json.loads((rd.path / "result.json").read_text())  # the scratch control of an older version
    if "control" in results:
        return results
    f = results["final"]
    after_dense = [e for e in results["epochs"] if e["stage"] != 0]
    return {"control": rd.path.name, "accuracy": f["accuracy"], "params": f["params"], "macs": f["macs"],
            "train_seconds": sum(e["seconds"] for e in after_dense),
            "train_images": sum(e.get("images", results["data"]["train_images"]) for e in after_dense)}


def control_rows(run_dir: str | Path) -> list[dict]:
    """Finished controls of a run, for its report."""
    controls = [RunDir(run_dir).control(k) for k in CONTROLS]
    return [control_row(c) for c in controls if c.finished]


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def seeds_summary(group: str | Path) -> dict:
    """Mean and standard deviation over the finished seed runs s*/ of a group (accuracy of dense, pruned and
    each control), written to seeds.json and seeds.md."""
    group = Path(group)
    runs = sorted((p for p in group.glob("s*/results.json") if p.parent.name[1:].isdigit()), key=lambda p: int(p.parent.name[1:]))
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
            name = f"{c['control']} control" + (" (distilled from the same teacher)" if c.get("distilled") else "")
            columns.setdefault(name, []).append(c["accuracy"])
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
        if name not in ("dense", "pruned") and len(acc[name]["values"]) == len(acc["pruned"]["values"]):
            lines.append(f"- pruned vs {name}: {compare(acc['pruned'], acc[name])}.")
    return "\n".join(lines) + "\n"
