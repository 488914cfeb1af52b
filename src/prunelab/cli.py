"""The `prunelab` command: parses arguments and delegates. Every Config field is a `run` option."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from .config import (CONTROL_BUDGETS, CONTROLS, INT8_RUNTIMES, PRESETS, Config, check_preset_weights, load_config_file,
                     make_config, to_dict)
from .errors import PrunelabError


OPTIONAL_VALUE = {"pretrained": "DEFAULT"}  # options whose value may be left out: the value they then take


def _add_config_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("settings (override the preset; see docs for units)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default) if f.default is not None and not callable(f.default_factory) else list
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f.metadata["help"])
        elif f.name in OPTIONAL_VALUE:  # `--pretrained` alone, or `--pretrained NAME`
            group.add_argument(flag, dest=f.name, nargs="?", const=OPTIONAL_VALUE[f.name], default=None,
                               metavar="NAME", help=f.metadata["help"])
        elif kind is list:
            group.add_argument(flag, dest=f.name, nargs="+", default=None, metavar="V", help=f.metadata["help"])
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=kind.__name__.upper(), help=f.metadata["help"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunelab", description="Structured pruning of CNNs, end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train -> iteratively prune -> fine-tune -> measure -> report",
                       description="Run the whole pipeline into runs/<name>/, or continue one with --resume.")
    p.add_argument("--preset", default="seed", help=f"starting settings: {', '.join(PRESETS)} (default: seed)")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (applied after the preset)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last finished step "
                   "(only runtime settings may be given: --device, --num-threads, --progress, --data-dir, ...)")
    p.add_argument("--or-resume", action="store_true", help="if the run directory exists already, continue it (its "
                   "recipe must equal the one given) instead of refusing: for jobs a scheduler may start again")
    _add_config_options(p)

    p = sub.add_parser("sweep", help="several targets and/or criteria, one run each, then a Pareto plot and table",
                       description="Each variant is a normal resumable run under <out_dir>/<name>/; run the same "
                                   "command again to resume. The dense model is trained once and shared.")
    p.add_argument("--preset", default="quick", help=f"starting settings: {', '.join(PRESETS)} (default: quick)")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (applied after the preset)")
    p.add_argument("--targets-macs", nargs="+", type=float, default=[], metavar="MACS", help="one run per MACs target")
    p.add_argument("--targets-params", nargs="+", type=float, default=[], metavar="N", help="one run per parameter target")
    p.add_argument("--targets-latency-ms", nargs="+", type=float, default=[], metavar="MS",
                   help="one run per latency target (as --target-latency-ms: --latency-runtime, --latency-batch-size)")
    p.add_argument("--targets-speedup", nargs="+", type=float, default=[], metavar="X",
                   help="one run per speed-up over the dense model (as --target-speedup; time on a quiet machine)")
    p.add_argument("--importances", nargs="+", default=[], metavar="NAME", help="one run per importance criterion")
    p.add_argument("--plan", metavar="DIR", help="run nothing: write one config per run and DIR/commands.txt (one "
                   "`prunelab run` line per job, for SLURM arrays or shell loops); then `prunelab collect`")
    _add_config_options(p)

    p = sub.add_parser("collect", help="the Pareto table and plot of a sweep's finished runs (grouped over seeds)",
                       description="Reads <sweep>/*/results.json (and their controls); writes pareto.md and pareto.png.")
    p.add_argument("sweep_dir")

    p = sub.add_parser("control", help="add controls to a finished run: scratch (same architecture from a random "
                       "init, same training time or images), scratch-long (on the dense training's images too) "
                       "and/or random (random criterion)",
                       description="Each control is resumable: run the same command again to continue. The report, "
                                   "results.json and results.png of the run gain a row per control.")
    p.add_argument("run_dir")
    p.add_argument("--kind", nargs="+", default=["scratch"], choices=CONTROLS)
    p.add_argument("--budget", default=None, choices=CONTROL_BUDGETS,
                   help="the scratch control's training: the run's prune-and-fine-tune training seconds (time) or "
                        "as many training images (images) (default: the run's control_budget, as `run --controls` "
                        "uses it: images for the trained presets, else time)")
    p.add_argument("--baseline-images", type=int, default=None,
                   help="for scratch-long after a --baseline run: the images the baseline trained on (its epochs x "
                        "training images)")
    p.add_argument("--lr", type=float, default=None,
                   help="the scratch control's SGD learning rate (default: the run's control_lr, else its final fine-tune's lr)")
    p.add_argument("--no-distill", dest="distill", action="store_false",
                   help="train the scratch controls on the labels alone, even when the run distilled (default: they "
                        "distil from the run's teacher as the run did, so that the teacher's gain is not counted as "
                        "pruning's)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: the run's)")
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: the run's)")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's)")

    p = sub.add_parser("quantize", help="INT8 (static post-training quantisation) of a finished run's final model",
                       description="Calibrates on training images only, measures accuracy on the run's test images and "
                                   "latency in the runtime that quantised, and adds an INT8 section to the run's report.")
    p.add_argument("run_dir")
    p.add_argument("--runtime", default="auto", help=" | ".join(INT8_RUNTIMES) + ": auto takes openvino (NNCF) when "
                   "OpenVINO and NNCF are installed, else onnxruntime (quantize_static)")
    p.add_argument("--calibration-images", type=int, default=300)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 128])
    p.add_argument("--num-threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's)")

    p = sub.add_parser("report", help="redraw report.md and results.png of a finished run from its files")
    p.add_argument("run_dir")

    p = sub.add_parser("eval", help="test accuracy of a saved model (a run directory's final model, or a file)",
                       description="Loads the model in this process and evaluates it on the test data the run used.")
    p.add_argument("model", metavar="RUN_DIR_OR_MODEL")
    p.add_argument("--data-dir", help="data folder (default: the one recorded in the model's config)")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a pickled whole model (.pt); only for files you made")
    p.add_argument("--trust-code", action="store_true", help="build a model whose file names a Python builder "
                   "(package.module:function): prunelab imports and calls it; only for files you trust")

    p = sub.add_parser("bench", help="measure models side by side: params, MACs, file size, latency (PyTorch, ONNX Runtime)",
                       description="A run directory stands for its dense and final models. Speed-ups are over the first model.")
    p.add_argument("models", nargs="+", metavar="RUN_DIR_OR_MODEL")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 128])
    p.add_argument("--device", default="auto", help="auto (CPU, plus CUDA when present) | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--runtimes", nargs="+", default=None, metavar="NAME",
                   help="pytorch | pytorch-fused (batch norms folded) | torch-compile | onnxruntime | openvino | all "
                        "(default: every installed one but torch-compile, whose compiling takes minutes on a small CPU)")
    p.add_argument("--onnx", action="store_true", help="with --runtimes unset: pytorch and onnxruntime only "
                   "(the option of earlier versions)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--min-reps", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="run PyTorch in channels_last (default: off; NCHW is faster at batch 1 on CPU)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled whole models (.pt)")
    p.add_argument("--trust-code", action="store_true", help="build a model whose file names a Python builder "
                   "(package.module:function): prunelab imports and calls it; only for files you trust")

    p = sub.add_parser("export", help="export a run's final model (or a model file) to ONNX, checked against PyTorch")
    p.add_argument("model", metavar="RUN_DIR_OR_MODEL")
    p.add_argument("--runtime", default="onnx", choices=["onnx", "onnxruntime", "openvino"],
                   help="also write what that runtime loads fastest: onnxruntime: model.ort-optimized.onnx (for "
                        "this machine); openvino: model.xml + model.bin (OpenVINO IR). PyTorch eager and torch.compile "
                        "need no export: they run the model file (prunelab.load)")
    p.add_argument("--out", metavar="FILE", help="output path (default: RUN_DIR/model.onnx or beside the model)")
    p.add_argument("--trust-code", action="store_true", help="build a model whose file names a Python builder "
                   "(package.module:function): prunelab imports and calls it; only for files you trust")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name, None) is not None}


def cmd_run(args) -> None:
    from .rundir import existing_run, open_existing
    from .sweep import run

    file_overrides = load_config_file(args.config) if args.config else {}
    overrides = {**file_overrides, **_overrides(args)}
    if args.resume:  # the saved settings, with what was given on top; the pipeline refuses recipe changes
        saved = open_existing(args.resume)[1]
        run(make_config("seed", {**to_dict(saved), **overrides}), args.resume)
        return
    cfg = make_config(args.preset, overrides)
    check_preset_weights(args.preset, cfg)
    run(cfg, existing_run(cfg) if args.or_resume else None)


def cmd_sweep(args) -> None:
    from .sweep import plan, sweep

    overrides = _overrides(args)
    overrides.setdefault("name", "sweep")
    file_overrides = load_config_file(args.config) if args.config else {}
    cfg = make_config(args.preset, {**file_overrides, **overrides})
    check_preset_weights(args.preset, cfg)
    targets = {"macs": args.targets_macs, "params": args.targets_params, "latency_ms": args.targets_latency_ms,
               "speedup": args.targets_speedup}
    if args.plan:
        plan(cfg, args.plan, targets, args.importances)
        return
    sweep(cfg, targets, args.importances)


def cmd_collect(args) -> None:
    from .sweep import collect
    collect(args.sweep_dir)


def cmd_control(args) -> None:
    from .controls import run_controls
    from .rundir import open_existing
    from .train import torch_threads
    given = {k: v for k, v in (("device", args.device), ("num_threads", args.num_threads), ("data_dir", args.data_dir),
                               ("control_lr", args.lr), ("baseline_images", args.baseline_images))
             if v is not None}
    cfg = make_config("seed", {**to_dict(open_existing(args.run_dir)[1]), **given})
    with torch_threads(cfg.num_threads):
        for row in run_controls(args.run_dir, args.kind, runtime=cfg, budget=args.budget,
                                distill=args.distill):
            print(f"{row['control']} control: test accuracy {100 * row['accuracy']:.2f}%")
    print(f"wrote {args.run_dir}/controls/ and updated report.md, results.json, results.png")


def cmd_quantize(args) -> None:
    from .quantize import quantize_run
    r = quantize_run(args.run_dir, args.calibration_images, args.batch_sizes, args.num_threads, data_dir=args.data_dir,
                     runtime=args.runtime)
    f32, i8 = r["models"]["fp32"], r["models"]["int8"]
    print(f"INT8 {100 * i8['accuracy']:.2f}% vs FP32 {100 * f32['accuracy']:.2f}% ({r['runtime']}, {r['test_images']} test "
          f"images); file {i8['file_size_bytes'] / 1e6:.3f} MB vs {f32['file_size_bytes'] / 1e6:.3f} MB")
    print(f"wrote {args.run_dir}/int8/ and updated report.md and results.json")


def cmd_report(args) -> None:
    from .report import render
    render(args.run_dir)
    print(f"wrote {args.run_dir}/report.md, results.png, curves.png and filters.png")


def cmd_eval(args) -> None:
    import json as _json

    from . import evaluate, load

    model, desc = load(args.model, trust_pickle=args.trust_pickle, trust_code=args.trust_code)
    if not desc.get("config"):
        raise PrunelabError(f"{args.model} records no data settings; evaluate it from Python with prunelab.evaluate")
    cfg = make_config("seed", {**desc["config"], **({"data_dir": args.data_dir} if args.data_dir else {}),
                               "baseline": ""})
    acc = evaluate(model, cfg)
    recorded = (desc.get("metrics") or {}).get("accuracy")
    line = f"test accuracy {100 * acc:.2f}% ({cfg.data_dir}, test_subset={cfg.test_subset or 'all'})"
    if recorded is not None:
        line += f"; recorded {100 * recorded:.2f}% ({'identical' if acc == recorded else f'{100 * (acc - recorded):+.2f} pts'})"
    print(line)
    print(_json.dumps({"accuracy": acc, "recorded_accuracy": recorded}))


def cmd_bench(args) -> None:
    import torch

    from .bench import bench, bench_runtimes, bench_table, models_to_bench
    from .files import write_json
    from .measurement import latency_devices
    from .train import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise PrunelabError("--batch-sizes must be positive integers")
    devices = latency_devices(resolve_device(args.device))
    runtimes = bench_runtimes(args.runtimes, onnx_only=args.onnx)
    result = bench(models_to_bench(args.models, args.trust_pickle, args.trust_code), args.batch_sizes, devices, warmup=args.warmup, min_reps=args.min_reps,
                   min_seconds=args.min_seconds, runtimes=runtimes, channels_last=args.channels_last)
    print(bench_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")


def cmd_export(args) -> None:
    from . import load
    from .export import export_onnx
    from .rundir import RunDir
    from .runtimes import export_for
    model, desc = load(args.model, trust_code=args.trust_code)
    src = Path(args.model)
    out = Path(args.out) if args.out else (RunDir(src).onnx if src.is_dir() else src.with_suffix(".onnx"))
    size = (desc.get("inputs") or {}).get("image_size", 32)
    info = export_onnx(model, out, input_size=size)
    print(f"wrote {out} (onnx.checker passed; onnxruntime matches PyTorch within {info['max_abs_diff']:.1e})")
    if args.runtime != "onnx":
        for f in export_for(args.runtime, model, out, size):
            print(f"wrote {f}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ok = False
    try:
        {"run": cmd_run, "sweep": cmd_sweep, "control": cmd_control, "collect": cmd_collect, "quantize": cmd_quantize, "report": cmd_report, "eval": cmd_eval, "bench": cmd_bench,
         "export": cmd_export}[args.command](args)
        ok = True
    except PrunelabError as e:
        print(f"prunelab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder we may not write to, a file that vanished
        where = f" {e.filename}" if e.filename else ""
        print(f"prunelab: error: cannot access{where}: {e.strerror or e}; free space or fix permissions, then "
              "continue with `prunelab run --resume RUN_DIR` (finished steps are kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunelab: interrupted; finished steps are kept, continue with `prunelab run --resume RUN_DIR`",
              file=sys.stderr)
        return 130
    finally:
        from .distributed import shutdown
        shutdown(wait=ok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
