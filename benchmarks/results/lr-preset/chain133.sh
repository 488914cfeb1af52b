#!/bin/bash
# The trained presets' final lr: 0.01 against 0.02 on the ResNet-18 fixture (second seed of the 10-epoch pairs at 2x and 4x, RESULTS 7.38).
# S = trained-short (2 epochs, flips), T = trained (10 epochs, crop); a queue (jobs133.txt), two workers at one thread each; worktree /work/wt133
cd /work/wt133
export PYTHONPATH=/work/wt133/src
C="--baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx"
Q=/work/runs/jobs133.txt
pop() { flock $Q.lock bash -c "head -1 $Q; sed -i 1d $Q"; }
worker() {
  while line=$(pop) && [ -n "$line" ]; do
    set -- $line; kind=$1; dir=/work/runs/$2; name=$3; shift 3
    case $kind in S) args="--preset trained-short $C";; *) args="--preset trained $C";; esac
    /usr/bin/time -v /work/main/.venv/bin/prunelab run $args --out-dir $dir "$@" --name $name > $dir/$name.log 2>&1
  done
}
worker & worker & wait
