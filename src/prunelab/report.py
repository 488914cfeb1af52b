"""Tables and plots from the files of a run directory. Reads files only; never re-runs anything."""
from __future__ import annotations

import json
from pathlib import Path

from .config import PrunelabError
from .files import read_jsonl, write_atomic, write_text


def build_results(run_dir: str | Path) -> dict:
    """The summary of a finished run, from config.json and metrics.jsonl."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    dense = next((r for r in rows if r["event"] == "dense"), None)
    final = next((r for r in rows if r["event"] == "final"), None)
    if dense is None or final is None:
        raise PrunelabError(f"{run_dir} has not finished (no {'dense' if dense is None else 'final'} metrics); "
                            f"finish it with `prunelab run --resume {run_dir}`")
    steps = sorted((r for r in rows if r["event"] == "step"), key=lambda r: r["step"])
    epochs = [r for r in rows if r["event"] == "epoch"]
    return {
        "name": config["name"], "reduced": config.get("reduced", ""), "config": config,
        "data": {k: dense.get(k) for k in ("data", "train_images", "val_images", "test_images")},
        "machine": final.get("machine", dense.get("machine")),
        "dense": _strip(dense), "steps": [_strip(s) for s in steps], "final": _strip(final),
        "wall_time_s": {"dense": dense["seconds"], "pruning_steps": sum(s["seconds"] for s in steps),
                        "final_finetune": final["seconds"],
                        "total": dense["seconds"] + sum(s["seconds"] for s in steps) + final["seconds"]},
        "epochs": [{k: e[k] for k in ("stage", "phase", "epoch", "loss", "train_accuracy", "val_accuracy", "lr",
                                      "images_per_s", "seconds") if k in e} for e in epochs],
    }


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("event", "machine", "classes", "data")}


def _latency_keys(row: dict) -> list[str]:
    keys = [k for k in row if k.startswith("latency_ms_")]
    return sorted(keys, key=lambda k: (k.split("_")[2], int(k.rsplit("_b", 1)[1])))


def _fmt_count(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _latency_label(key: str) -> str:
    device, batch = key[len("latency_ms_"):].rsplit("_b", 1)
    return f"Latency {device.upper()} batch {batch}"


def key_results_markdown(results: dict) -> str:
    """The seed's Key Results table: original, pruned, change."""
    d, f = results["dense"], results["final"]
    lines = ["| Metric | Original model | Pruned model | Change |", "| :--- | :---: | :---: | :---: |",
             f"| Accuracy (test) | {100 * d['accuracy']:.2f}% | **{100 * f['accuracy']:.2f}%** | "
             f"{100 * (f['accuracy'] - d['accuracy']):+.2f} pts |"]
    for key, label in (("params", "Parameters"), ("macs", "MACs")):
        lines.append(f"| {label} | {_fmt_count(d[key])} | **{_fmt_count(f[key])}** | "
                     f"{100 * (f[key] / d[key] - 1):+.1f}% ({d[key] / f[key]:.0f}x fewer) |")
    for key in _latency_keys(f):
        if key in d:
            lines.append(f"| {_latency_label(key)} | {d[key]:.2f} ms | **{f[key]:.2f} ms** | "
                         f"{d[key] / f[key]:.1f}x faster |")
    if "file_size_bytes" in d and "file_size_bytes" in f:
        lines.append(f"| File size (safetensors) | {d['file_size_bytes'] / 1e6:.2f} MB | "
                     f"**{f['file_size_bytes'] / 1e6:.3f} MB** | {d['file_size_bytes'] / f['file_size_bytes']:.0f}x smaller |")
    return "\n".join(lines)


def steps_markdown(results: dict) -> str:
    rows = [results["dense"], *results["steps"], results["final"]]
    lat = [k for k in _latency_keys(results["final"])]
    head = ["Stage", "Channel ratio", "Acc. before FT", "Acc. after FT", "Params", "MACs",
            *[_latency_label(k).replace("Latency ", "") + " (ms)" for k in lat], "Wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for r in rows:
        stage = "dense" if r["stage"] == 0 else ("final" if "step" not in r else f"step {r['step']}")
        before = f"{100 * r['accuracy_before_finetune']:.2f}%" if "accuracy_before_finetune" in r else ""
        lats = [f"{r[k]:.2f}" if k in r else "" for k in lat]
        lines.append("| " + " | ".join([stage, f"{r['ratio']:.3f}", before, f"{100 * r['accuracy']:.2f}%",
                                        _fmt_count(r["params"]), _fmt_count(r["macs"]), *lats,
                                        f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def report_markdown(results: dict) -> str:
    cfg, m, w = results["config"], results.get("machine") or {}, results["wall_time_s"]
    parts = [
        f"# prunelab run `{results['name']}`", "",
        f"{cfg['model']} pruned with Torch-Pruning ({cfg['importance']} importance, "
        f"{'global' if cfg['global_pruning'] else 'per-layer'}), channel ratio {cfg['pruning_ratio']} in "
        f"{cfg['iterative_steps']} steps, {cfg['finetune_epochs_per_step']} fine-tune epoch(s) per step and "
        f"{cfg['final_finetune_epochs']} at the end; dense baseline "
        + (f"loaded from `{cfg['baseline']}`." if cfg.get("baseline") else f"trained for {cfg['epochs']} epochs."),
        "",
        f"Data: {results['data']['data']} ({results['data']['train_images']} training, "
        f"{results['data']['test_images']} test images).",
    ]
    if results.get("reduced"):
        parts += ["", f"**Reduced from the seed recipe:** {results['reduced']}."]
    parts += ["", "## Key results", "", key_results_markdown(results), "",
              f"Latency: fp32 forward pass in eval mode, median of timed runs after warm-up, "
              f"{m.get('torch_threads', '?')} CPU threads"
              + (f", GPU {m['gpu']}" if m.get("gpu") else "") + ".", "",
              "![results](results.png)", "", "![training curves](curves.png)", "", "![conv1 filters](filters.png)", "",
              "## Every stage", "", steps_markdown(results), "",
              f"Wall time: dense {w['dense']:.0f} s, pruning steps {w['pruning_steps']:.0f} s, "
              f"final fine-tune {w['final_finetune']:.0f} s, total {w['total']:.0f} s.", "",
              f"Machine: {m.get('processor', '?')}, {m.get('cpu_count', '?')} CPUs, {m.get('platform', '?')}, "
              f"torch {m.get('torch', '?')}" + (f", {m['gpu']}" if m.get("gpu") else "") + ".", ""]
    return "\n".join(parts)


def plot(results: dict, path: str | Path) -> None:
    """The seed's figure, every point from results: accuracy, size and latency against the channel ratio,
    and original-vs-pruned bars for accuracy, parameters, MACs and latency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d, steps, f = results["dense"], results["steps"], results["final"]
    ratios = [0.0] + [s["ratio"] for s in steps]
    fig = plt.figure(figsize=(15, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 12)
    ax_acc, ax_size, ax_lat = (fig.add_subplot(grid[0, i * 4:(i + 1) * 4]) for i in range(3))

    ax_acc.plot([s["ratio"] for s in steps], [100 * s["accuracy_before_finetune"] for s in steps], "o--",
                color="tab:red", label="after pruning, before fine-tune")
    ax_acc.plot(ratios, [100 * d["accuracy"]] + [100 * s["accuracy"] for s in steps], "o-", color="tab:blue",
                label="after fine-tune")
    ax_acc.plot([f["ratio"]], [100 * f["accuracy"]], "*", ms=14, color="tab:green", label="after final fine-tune")
    ax_acc.set(xlabel="channel pruning ratio", ylabel="test accuracy (%)", title="Accuracy")
    ax_acc.legend(fontsize=8)

    ax_size.plot(ratios, [d["params"] / 1e6] + [s["params"] / 1e6 for s in steps], "o-", label="parameters (M)")
    ax_size.plot(ratios, [d["macs"] / 1e6] + [s["macs"] / 1e6 for s in steps], "s-", label="MACs (M)")
    ax_size.set(xlabel="channel pruning ratio", ylabel="millions (log scale)", yscale="log", title="Size and compute")
    ax_size.legend(fontsize=8)

    lat_keys = _latency_keys(d)
    for key in lat_keys:
        xs = [r for r, row in zip(ratios, [d] + steps) if key in row]
        ys = [row[key] for row in [d] + steps if key in row]
        ax_lat.plot(xs, ys, "o-", label=_latency_label(key))
    ax_lat.set(xlabel="channel pruning ratio", ylabel="ms (log scale)", yscale="log", title="Latency (median)")
    ax_lat.legend(fontsize=8)

    lat_key = lat_keys[-1] if lat_keys else None
    bars = [("accuracy", "Accuracy (%)", 100), ("params", "Parameters (M)", 1e-6), ("macs", "MACs (M)", 1e-6)]
    if lat_key:
        bars.append((lat_key, _latency_label(lat_key) + " (ms)", 1))
    for i, (key, label, scale) in enumerate(bars):
        ax = fig.add_subplot(grid[1, i * 3:(i + 1) * 3])
        vals = [d[key] * scale, f[key] * scale]
        b = ax.bar(["original", "pruned"], vals, color=["tab:gray", "tab:green"])
        ax.bar_label(b, labels=[f"{v:.3g}" for v in vals])
        ax.set_title(label)
        ax.margins(y=0.15)
    fig.suptitle(f"prunelab run '{results['name']}': {results['config']['model']}, "
                 f"{results['config']['importance']} importance, {len(steps)} steps")
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def plot_curves(results: dict, path: str | Path) -> None:
    """Training curves: loss and accuracy per epoch of the dense training and of the final fine-tune."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    final_stage = results["final"]["stage"]
    phases = [("dense training", [e for e in results["epochs"] if e["stage"] == 0]),
              ("final fine-tune", [e for e in results["epochs"] if e["stage"] == final_stage])]
    phases = [(name, rows) for name, rows in phases if rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for name, rows in phases:
        epochs = [e["epoch"] for e in rows]
        axes[0].plot(epochs, [e["loss"] for e in rows], "o-", label=name)
        axes[1].plot(epochs, [100 * e["train_accuracy"] for e in rows], "o-", label=f"{name}: train")
        if all("val_accuracy" in e for e in rows):
            axes[1].plot(epochs, [100 * e["val_accuracy"] for e in rows], "s--", label=f"{name}: validation")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="Loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy (train: augmented batches, as trained)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if not phases:
        fig.text(0.5, 0.5, "no training epochs in this run (baseline loaded, no final fine-tune)", ha="center")
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def plot_filters(run_dir: Path, path: str | Path) -> None:
    """The first convolution's filters, dense and pruned (after fine-tuning), as small RGB images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors import safe_open

    def conv1(name: str):
        with safe_open(str(run_dir / "checkpoints" / f"{name}.safetensors"), "np") as f:
            return f.get_tensor("conv1.weight")  # out x 3 x k x k

    dense, pruned = conv1("dense"), conv1("final")
    fig = plt.figure(figsize=(12, 5), layout="constrained")
    subfigs = fig.subfigures(1, 2, width_ratios=[2, 1])
    for sub, weights, title in ((subfigs[0], dense, f"dense: {len(dense)} filters"),
                                (subfigs[1], pruned, f"pruned and fine-tuned: {len(pruned)} filters")):
        cols = 8 if len(weights) > 16 else min(len(weights), 6)
        rows = -(-len(weights) // cols)
        axes = sub.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(weights):
                w = weights[i].transpose(1, 2, 0)
                ax.imshow((w - w.min()) / (w.max() - w.min() + 1e-12), interpolation="nearest")
        sub.suptitle(title)
    fig.suptitle(f"First convolution (conv1) filters, run '{run_dir.name}'")
    write_atomic(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)


def render(run_dir: str | Path, results: dict | None = None) -> None:
    """Write report.md and results.png of a finished run from its results (by default its results.json)."""
    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    if results is None and not results_path.is_file():
        if not (run_dir / "config.json").is_file():
            raise PrunelabError(f"{run_dir} is not a prunelab run directory (no config.json)")
        raise PrunelabError(f"{run_dir} has no results.json: the run has not finished; "
                            f"finish it with `prunelab run --resume {run_dir}`")
    if results is None:
        results = json.loads(results_path.read_text())
    plot(results, run_dir / "results.png")
    plot_curves(results, run_dir / "curves.png")
    if results["config"]["model"] == "resnet18_cifar":
        plot_filters(run_dir, run_dir / "filters.png")
    write_text(run_dir / "report.md", report_markdown(results))


# Published reference points for the Pareto plot, on the official CIFAR-10 files (not measured here):
# the seed project's pruned ResNet-18 (its README) and small networks trained from scratch, as cited in
# prunelab's "beat the seed" issue. Marked as such on the plot.
REFERENCES = [
    {"name": "seed project (pruned ResNet-18, published)", "macs": 5.29e6, "accuracy": 0.8470},
    {"name": "ShuffleNetV2-0.5 from scratch (published)", "macs": 10.9e6, "accuracy": 0.901},
    {"name": "ResNet-8 from scratch (published, approx.)", "macs": 12.5e6, "accuracy": 0.85},
]


def sweep_rows(sweep_dir: str | Path) -> list[dict]:
    """One row per finished run under sweep_dir: its recipe, accuracy and cost."""
    rows = []
    for results_path in sorted(Path(sweep_dir).glob("*/results.json")):
        r = json.loads(results_path.read_text())
        c, f, d = r["config"], r["final"], r["dense"]
        rows.append({"run": r["name"], "importance": c["importance"], "global": c["global_pruning"],
                     "schedule": c.get("schedule", "linear"), "distill": c.get("distill", False),
                     "pruning_ratio": f["ratio"], "accuracy": f["accuracy"], "macs": f["macs"], "params": f["params"],
                     "dense_accuracy": d["accuracy"], "dense_macs": d["macs"],
                     "latency_ms_cpu_b1": f.get("latency_ms_cpu_b1"), "wall_time_s": r["wall_time_s"]["total"]})
    return rows


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows not beaten by another row on both accuracy (higher) and MACs (lower), by MACs."""
    front = [r for r in rows if not any(o["accuracy"] >= r["accuracy"] and o["macs"] <= r["macs"] and
                                        (o["accuracy"], o["macs"]) != (r["accuracy"], r["macs"]) for o in rows)]
    return sorted(front, key=lambda r: r["macs"])


def render_sweep(sweep_dir: str | Path) -> list[dict]:
    """pareto.png (accuracy vs MACs, log axis) and pareto.md for the finished runs of a sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)
    if not rows:
        raise PrunelabError(f"{sweep_dir} holds no finished runs (no */results.json); run `prunelab sweep` first")
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(9, 6), layout="constrained")
    for imp in sorted({r["importance"] for r in rows}):
        pts = [r for r in rows if r["importance"] == imp]
        ax.scatter([r["macs"] / 1e6 for r in pts], [100 * r["accuracy"] for r in pts], s=40, label=f"pruned: {imp}")
    ax.plot([r["macs"] / 1e6 for r in front], [100 * r["accuracy"] for r in front], "k--", lw=1, label="Pareto front")
    dense = rows[0]
    ax.scatter([dense["dense_macs"] / 1e6], [100 * dense["dense_accuracy"]], marker="s", color="gray", s=60,
               label="dense (this sweep)")
    for ref in REFERENCES:
        ax.scatter([ref["macs"] / 1e6], [100 * ref["accuracy"]], marker="x", s=70, label=ref["name"])
    ax.set(xscale="log", xlabel="MACs per image (millions, log scale)", ylabel="test accuracy (%)",
           title=f"Accuracy vs compute: sweep '{sweep_dir.name}' (data: this run's test set; references: official CIFAR-10)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    write_atomic(sweep_dir / "pareto.png", lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)

    lines = [f"# Sweep `{sweep_dir.name}`", "", "| run | importance | global | schedule | distill | ratio | accuracy | MACs "
             "| params | CPU b1 (ms) | wall (s) | Pareto |", "| :--- | :--- | :---: | :--- | :---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for r in sorted(rows, key=lambda r: r["macs"]):
        lat = f"{r['latency_ms_cpu_b1']:.2f}" if r["latency_ms_cpu_b1"] else ""
        lines.append(f"| {r['run']} | {r['importance']} | {'yes' if r['global'] else 'no'} | {r['schedule']} | "
                     f"{'yes' if r['distill'] else 'no'} | {r['pruning_ratio']:.3f} | {100 * r['accuracy']:.2f}% | "
                     f"{_fmt_count(r['macs'])} | {_fmt_count(r['params'])} | {lat} | {r['wall_time_s']:.0f} | "
                     f"{'*' if r in front else ''} |")
    lines += ["", f"Dense model: {100 * dense['dense_accuracy']:.2f}% at {_fmt_count(dense['dense_macs'])} MACs.", "",
              "References (published on the official CIFAR-10 files, not measured here): "
              + "; ".join(f"{r['name']}: {100 * r['accuracy']:.1f}% at {_fmt_count(r['macs'])} MACs" for r in REFERENCES)
              + ".", "", "![pareto](pareto.png)", ""]
    write_text(sweep_dir / "pareto.md", "\n".join(lines))
    return rows
