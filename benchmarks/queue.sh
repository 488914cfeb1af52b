#!/bin/bash
# Run the shell commands in JOBS (one per line; blank lines and lines starting with # skipped) on WORKERS workers
# that each take the next line as they finish one: the way long measurements share this 2-core CPU (two workers,
# each command at --num-threads 1). Lines are removed from JOBS as they are taken, so appending lines while it runs
# queues more work, and a queue that was stopped goes on where it left off with the commands' own --or-resume.
#   bash benchmarks/queue.sh jobs.txt 2          # e.g. a line: prunelab run ... --or-resume > runs/a.log 2>&1
set -u
JOBS=${1:?usage: queue.sh JOBS [WORKERS]}; WORKERS=${2:-2}
[ -f "$JOBS" ] || { echo "queue.sh: no jobs file $JOBS" >&2; exit 2; }
pop() { flock "$JOBS.lock" bash -c 'head -n 1 "$1"; sed -i 1d "$1"' _ "$JOBS"; }
worker() {
  while [ -s "$JOBS" ]; do
    line=$(pop)
    case "$line" in ''|'#'*) continue;; esac
    echo "$(date -u +%FT%TZ) worker $1: $line"
    bash -c "$line"; rc=$?
    [ $rc = 0 ] || echo "$(date -u +%FT%TZ) worker $1: exit $rc from: $line"
  done
}
for w in $(seq "$WORKERS"); do worker "$w" & done
wait
