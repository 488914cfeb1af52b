"""Where a README test file's time goes: one group of the README's commands (tests/test_readme.py's
runnable_commands: single, multi or main), run as its test runs them (shrunk by SMALL, on the real data copy, one
thread as a test worker), under cProfile; prints prunelab's functions by cumulative time.

    python benchmarks/readme_group_profile.py multi [--top 30] [--out prof.out]

Decoded images go to a cache of its own (PRUNELAB_CACHE, default /tmp/prunelab-profile-cache): the first call decodes
them, as each test worker's first real-data test does.
"""
import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("group", choices=["single", "multi", "main"])
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default="", help="also keep the cProfile data here")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTEST_XDIST_WORKER"] = "gw0"  # conftest.py: one thread, as on a test worker
    os.environ.setdefault("PRUNELAB_CACHE", str(Path(tempfile.gettempdir()) / "prunelab-profile-cache"))
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest
    from test_readme import run_readme_commands, runnable_commands
    work = Path(tempfile.mkdtemp(prefix=f"readme-{args.group}-"))
    profile = cProfile.Profile()
    start = time.perf_counter()
    try:
        profile.runcall(run_readme_commands, runnable_commands()[args.group], work, conftest.REAL_DATA)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"README group '{args.group}': {time.perf_counter() - start:.1f} s under cProfile")
    if args.out:
        profile.dump_stats(args.out)
    pstats.Stats(profile).sort_stats("cumulative").print_stats("prunelab/.*py", args.top)


if __name__ == "__main__":
    main()
