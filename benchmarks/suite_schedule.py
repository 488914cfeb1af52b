"""How pytest-xdist's `--dist loadfile` spreads the test files over the workers, replayed from one measured run.

Usage: suite_schedule.py DURATIONS_LOG [--workers 2] [--json OUT]
DURATIONS_LOG is the output of `pytest -q --durations=0` (every test's setup, call and teardown time). The script
collects the tests in this checkout's order (`pytest --collect-only -n 0`, conftest.py's sort included) and replays
xdist 3.8's LoadScope scheduler with those times: files in collection order (`--no-loadscope-reorder`) or sorted by
their number of tests (xdist's default); a worker gets its next file whenever it has two tests or fewer left. It
prints each policy's busiest worker, which is the suite's wall time less start-up, and writes them as JSON.
"""
import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def durations(log: Path) -> dict[str, float]:
    times: dict[str, float] = collections.defaultdict(float)
    for line in log.read_text().splitlines():
        m = re.match(r"\s*([\d.]+)s (?:call|setup|teardown)\s+(.+?)\s*$", line)  # (ids may hold spaces)
        if m:
            times[m.group(2)] += float(m.group(1))
    return times


def collection() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if "::" in line]


def replay(tests: list[str], times: dict[str, float], workers: int, reorder: bool) -> list[float]:
    """Each worker's busy time under LoadScopeScheduling (xdist/scheduler/loadscope.py: schedule, _reschedule)."""
    queue: dict[str, list[str]] = {}
    for t in tests:
        queue.setdefault(t.rsplit("::", 1)[0], []).append(t)
    units = sorted(queue.values(), key=len, reverse=True) if reorder else list(queue.values())
    pending: list[list[str]] = [[] for _ in range(workers)]
    clock = [0.0] * workers
    for w in range(workers):  # one unit each, then a second where the first has two tests or fewer
        if units:
            pending[w] += units.pop(0)
    for w in range(workers):
        if units and len(pending[w]) <= 2:
            pending[w] += units.pop(0)
    while any(pending):
        w = min((k for k in range(workers) if pending[k]), key=lambda k: clock[k] + times.get(pending[k][0], 0.0))
        clock[w] += times.get(pending[w].pop(0), 0.0)
        if units and len(pending[w]) <= 2:
            pending[w] += units.pop(0)
    return clock


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    times, tests = durations(a.log), collection()
    missing = [t for t in tests if t not in times]
    rows = {}
    print(f"{len(tests)} tests, {sum(times.get(t, 0.0) for t in tests):.0f} s of test time in {a.log}"
          + (f"; {len(missing)} collected tests have no time in the log (pytest leaves out those under 5 ms: counted as 0 s)" if missing else ""))
    print(f"| files handed out | busiest worker (s) | others (s) |\n| :--- | ---: | ---: |")
    for name, reorder in (("by number of tests (xdist default)", True), ("in collection order (--no-loadscope-reorder)", False)):
        clock = sorted(replay(tests, times, a.workers, reorder), reverse=True)
        rows[name] = clock
        print(f"| {name} | {clock[0]:.0f} | {', '.join(f'{c:.0f}' for c in clock[1:])} |")
    if a.json:
        a.json.write_text(json.dumps({"log": str(a.log), "workers": a.workers, "busy_s": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
