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
        overrides = {k: v for k, v in _overrides(args).items() if k != "baseline"}  # (the file is the user's)
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
         "--latency-min-reps", "2", "--no-progress"]


@pytest.mark.slow
def test_readme_commands_run_at_a_small_size(tmp_path, real_data):
    """Run every prunelab command the README shows, in order, shrunk by SMALL, on the real data copy. Commands
    that may load OpenVINO (bench, export, quantize) run in a fresh process, as everywhere in this suite; the
    others in this one, which saves each the interpreter and import start-up (~5 s of its ~15)."""
    from conftest import cli, run_cli

    def prunelab(*args):
        if args[0] in ("bench", "export", "quantize"):
            r = run_cli(*args, cwd=tmp_path)
            return r.returncode, r.stdout, r.stderr
        return cli(*args, cwd=tmp_path)

    commands = list(dict.fromkeys(readme_commands()))
    # commands on the user's own files (~/data/..., their package) are examples to adapt: parsed above, not run
    runs = [c for c in commands if c.split()[0] in ("run", "sweep") and "~/" not in c]
    main_job = "run --preset quick --data-dir ../shared/data/cifar10-jpeg"
    assert main_job in runs
    runs.remove(main_job)
    for i, command in enumerate([main_job] + runs):
        args = shlex.split(command)
        args = [str(real_data) if a in ("../shared/data/cifar10-jpeg", "data") else a for a in args]
        args = [str(tmp_path / "runs" / "quick" / "checkpoints" / "dense.safetensors") if a == "dense.safetensors"
                else a for a in args if a != "--download"]  # offline: the local copy stands in for a download
        if "--data-dir" not in args:
            args += ["--data-dir", real_data]
        if "--name" not in args and i > 0:
            args += ["--name", f"readme{i}"]
        code, _, err = prunelab(*args, *SMALL)
        assert code == 0, f"{command}\n{err[-2000:]}"
    assert (tmp_path / "runs" / "sweep1" / "pareto.png").is_file()
    for command in [c for c in commands if c.split()[0] in ("eval", "bench", "export", "quantize", "control")]:
        if "--runtimes all" in command:  # torch.compile takes minutes here; tests/test_export.py covers it
            continue
        extra = ["--min-seconds", "0", "--min-reps", "2", "--warmup", "1"] if command.startswith("bench") else []
        code, out, err = prunelab(*shlex.split(command), *extra)
        assert code == 0, f"{command}\n{err[-2000:]}"
        if command.startswith("eval"):
            assert "identical" in out
