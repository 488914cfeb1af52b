"""Keep the small records of finished runs, so that `prunelab collect` can redraw their table and plot after the
runs' folders (models, checkpoints: megabytes each) are gone with a session's machine.

Usage: keep_records.py DEST RUN_DIR [RUN_DIR ...]
Copies each run's results.json, checkpoints/final.json (the final model's description: collect reads its image size
and classes) and every finished control's results.json to DEST/<run name>/, atomically per file. Then
`prunelab collect DEST` writes DEST/pareto.md and DEST/pareto.png from them.
"""
import shutil
import sys
from pathlib import Path

from prunelab.files import write_atomic

KEPT = ["results.json", "checkpoints/final.json"]


def keep(run: Path, dest: Path) -> list[Path]:
    if not (run / "results.json").is_file():
        raise SystemExit(f"{run} is not a finished run (no results.json); finish it first (`prunelab run --resume {run}`)")
    names = KEPT + [str(p.relative_to(run)) for p in sorted(run.glob("controls/*/results.json"))]
    written = []
    for name in names:
        if (run / name).is_file():
            target = dest / run.name / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, lambda p, src=run / name: shutil.copyfile(src, p))
            written.append(target)
    return written


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: keep_records.py DEST RUN_DIR [RUN_DIR ...]")
    dest = Path(sys.argv[1])
    for run in map(Path, sys.argv[2:]):
        for path in keep(run, dest):
            print(path)
