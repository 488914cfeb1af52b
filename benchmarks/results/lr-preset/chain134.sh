#!/bin/bash
# RESULTS 7.38: the 2x runs' own scratch controls (10 epochs at lr 0.1, as many images), side by side, two seeds; worktree /work/wt134
cd /work/wt134
export PYTHONPATH=/work/wt134/src
for d in lr131/t2-lr0.02-s0 lr133/t2-lr0.02-s1; do
  n=$(basename $(dirname $d)); s=${d##*-}
  /usr/bin/time -v /work/main/.venv/bin/prunelab control /work/runs/$d --kind scratch --budget images --num-threads 1 > /work/runs/$n/ctl-t2-$s.log 2>&1 &
done
wait
