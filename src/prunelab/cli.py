"""The `prunelab` command: parses arguments and delegates. Every Config field is a `run` option."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .config import PRESETS, Config, PrunelabError, load_config_file, make_config

# Settings that may differ when a run is resumed (where it runs, not what it computes).
RESUMABLE_OVERRIDES = {"data_dir", "cache_dir", "device", "num_threads", "progress"}


def _add_config_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("settings (override the preset; see docs for units)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default) if f.default is not None and not callable(f.default_factory) else list
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f.metadata["help"])
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
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last finished step")
    _add_config_options(p)

    p = sub.add_parser("report", help="redraw report.md and results.png of a finished run from its files")
    p.add_argument("run_dir")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name, None) is not None}


def cmd_run(args) -> None:
    from .pipeline import open_existing, run

    overrides = _overrides(args)
    if args.resume:
        fixed = sorted(set(overrides) - RESUMABLE_OVERRIDES)
        if fixed or args.config:
            raise PrunelabError(f"--resume continues a run with its own settings; drop {', '.join(fixed) or '--config'} "
                                "(start a new run to change them)")
        rd, cfg = open_existing(args.resume)
        cfg = make_config("seed", {**{f.name: getattr(cfg, f.name) for f in fields(Config)}, **overrides})
        run(cfg, rd.path)
        return
    file_overrides = load_config_file(args.config) if args.config else {}
    cfg = make_config(args.preset, {**file_overrides, **overrides})
    run(cfg)


def cmd_report(args) -> None:
    from .report import render
    render(args.run_dir)
    print(f"wrote {args.run_dir}/report.md and results.png")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"run": cmd_run, "report": cmd_report}[args.command](args)
    except PrunelabError as e:
        print(f"prunelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunelab: interrupted; finished steps are kept, continue with `prunelab run --resume RUN_DIR`",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
