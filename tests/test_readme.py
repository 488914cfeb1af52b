"""The README's commands must stay true: every prunelab command it shows parses with today's CLI,
and its first screen names the set-up, main-job and test commands that CI runs."""
import re
import shlex
from pathlib import Path

import pytest

from prunelab.cli import _overrides, build_parser
from prunelab.config import make_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands():
    """Commands in code: lines indented by 4 spaces or inside ``` fences, joined across backslashes."""
    in_fence = False
    for raw in README.replace("\\\n", " ").splitlines():
        if raw.startswith("```"):
            in_fence = not in_fence
            continue
        if not (in_fence or raw.startswith("    ")):
            continue
        line = raw.strip().split("  #")[0].strip()
        for part in line.split("&&"):
            m = re.match(r"^(?:\.venv/bin/)?prunelab (.*)$", part.strip())
            if m:
                yield m.group(1)


@pytest.mark.parametrize("command", sorted(set(readme_commands())))
def test_every_prunelab_command_in_the_readme_parses(command):
    args = build_parser().parse_args(shlex.split(command))  # argparse exits (SystemExit) on unknown options
    if args.command in ("run", "sweep"):  # and every setting's value passes validation
        overrides = {k: (str(ROOT / "README.md") if k in ("baseline", "init_from") else v)  # (the files are the
                     for k, v in _overrides(args).items()}  # user's: any existing file stands in for them)
        make_config(args.preset, overrides)


def test_readme_first_screen_gives_the_main_job_and_the_test_command_that_ci_runs():
    first_screen = "\n".join(README.splitlines()[:25])
    assert "bash scripts/install.sh && .venv/bin/prunelab run --preset quick --data-dir ../shared/data/cifar10-jpeg" in first_screen
    test_command = "bash scripts/install.sh && .venv/bin/python -m pytest -q"
    assert test_command in first_screen
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/install.sh" in ci and ".venv/bin/python -m pytest -q" in ci


def test_cli_reference_in_docs_is_generated_from_the_current_parser():
    import importlib.util
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "CLI.md").read_text() == module.reference(), \
        "docs/CLI.md is stale: run `python scripts/cli_reference.py`"


SMALL = ["--train-subset", "128", "--test-subset", "64", "--epochs", "1", "--iterative-steps", "1",
         "--final-finetune-epochs", "0", "--latency-batch-sizes", "1", "--latency-min-seconds", "0",
         "--latency-min-reps", "2", "--no-progress",
         "--search-budget", "3", "--search-images", "128", "--search-train-images", "128",  # for --allocation search
         "--no-fill-budget"]  # (2/3 of the sweep's time here; test_run_rules.py runs the fill)
MAIN_JOB = "run --preset quick --data-dir ../shared/data/cifar10-jpeg"
TOOLS = ("eval", "bench", "export", "quantize", "control")


def runnable_commands() -> dict[str, list[str]]:
    """The README's commands that a test runs, in three groups that run on different test workers (a file each):
    "single" runs, "multi" (sweeps and runs with seeds or controls: several runs each), and "main": the main job
    followed by everything that uses its run directory (runs/quick, its dense.safetensors) and the latency-target
    run. Commands on the user's own files (~/data/..., their package) are examples to adapt: parsed above, not
    run; `bench --runtimes all` too (torch.compile takes minutes here; test_export.py covers it)."""
    commands = list(dict.fromkeys(readme_commands()))
    assert MAIN_JOB in commands
    groups = {"single": [], "multi": [], "main": [MAIN_JOB]}
    for c in commands:
        args = c.split()
        if c == MAIN_JOB or "~/" in c or "--runtimes all" in c or args[0] not in ("run", "sweep") + TOOLS:
            continue
        if args[0] in TOOLS or "dense.safetensors" in args or "--target-latency-ms" in args:
            groups["main"].append(c)
        elif args[0] == "sweep" or "--seeds" in args or "--controls" in args:
            groups["multi"].append(c)
        else:
            groups["single"].append(c)
    return groups


def run_readme_commands(commands: list[str], tmp_path: Path, real_data: Path) -> None:
    """Run README commands in order, shrunk by SMALL, on the real data copy, in `tmp_path` as the user's folder.
    Commands that may load OpenVINO (bench, export, quantize) run in a fresh process, as everywhere in this suite;
    the others in this one, which saves each the interpreter and import start-up (~5 s of its ~15)."""
    from conftest import cli, run_cli
    for i, command in enumerate(commands):
        args = shlex.split(command)
        if args[0] in TOOLS:
            extra = ["--min-seconds", "0", "--min-reps", "2", "--warmup", "1"] if args[0] == "bench" else []
            if args[0] == "bench" and "--batch-sizes" not in args:  # batch 128 of the dense model: ~35 s here
                extra += ["--batch-sizes", "1", "4"]
            if args[0] in ("bench", "export", "quantize"):
                r = run_cli(*args, *extra, cwd=tmp_path)
                code, out, err = r.returncode, r.stdout, r.stderr
            else:
                code, out, err = cli(*args, *extra, cwd=tmp_path)
            assert code == 0, f"{command}\n{err[-2000:]}"
            if args[0] == "eval":
                assert "identical" in out
            continue
        args = [str(real_data) if a in ("../shared/data/cifar10-jpeg", "data") else a for a in args]
        args = ["64" if before == "--val-size" else a for before, a in zip([""] + args, args)]  # (the dense model
        # scores the validation split: 2,000 images were ~15 of the searched run's ~25 s)
        args = [str(tmp_path / "runs" / "quick" / "checkpoints" / "dense.safetensors") if a == "dense.safetensors"
                else a for a in args if a != "--download"]  # offline: the local copy stands in for a download
        if "--data-dir" not in args:
            args += ["--data-dir", real_data]
        if "--name" not in args and command != MAIN_JOB:
            args += ["--name", f"readme{i}"]
        code, _, err = cli(*args, *SMALL, cwd=tmp_path)
        assert code == 0, f"{command}\n{err[-2000:]}"


def test_the_readme_command_groups_cover_every_runnable_command_once():
    groups = runnable_commands()
    every = [c for g in groups.values() for c in g]
    assert len(every) == len(set(every)) and groups["main"][0] == MAIN_JOB
    assert any(c.startswith("sweep") for c in groups["multi"]) and any(c.startswith("eval") for c in groups["main"])
    assert "run --preset seed --baseline dense.safetensors" in groups["main"]  # needs the main job's dense checkpoint
    assert len(groups["single"]) >= 5


@pytest.mark.slow
def test_readme_single_run_commands_run_at_a_small_size(tmp_path, real_data):
    """The README's standalone runs (the other groups: tests/test_readme_multi_runs.py, test_readme_main_job.py)."""
    run_readme_commands(runnable_commands()["single"], tmp_path, real_data)
