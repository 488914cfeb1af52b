import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` (pyproject's addopts: one worker per core): N test processes share the cores, so each, and every
    # prunelab process a test starts, computes on one thread; two 2-thread processes on 2 cores spin-wait each other
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
BASELINE = ROOT.parent / "shared" / "models" / "resnet18-cifar10jpeg-seedrecipe.safetensors"


def run_cli(*args, cwd=None, timeout=600):
    """Run `python -m prunelab ARGS` in a fresh process; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "prunelab", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def cli(*args, cwd=None):
    """Run `prunelab ARGS` in this process (where no subprocess behaviour is under test): (exit code, stdout,
    stderr). Faster than run_cli by the interpreter and import start-up."""
    import contextlib
    import io
    import os

    from prunelab.cli import main
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def real_data():
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Decoded-image caches go to one folder per test session, not the user's home."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_collection_modifyitems(items):
    """The longest tests (marked slow) first: with workers, the others fill the time beside them instead of
    one worker finishing alone at the end. Workers take whole files in the order of their first test here
    (`--no-loadscope-reorder` in pyproject.toml; by default xdist sorts files by their number of tests)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
