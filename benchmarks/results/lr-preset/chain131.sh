#!/bin/bash
# The trained presets' final lr: 0.01 against 0.02 on the ResNet-18 fixture (RESULTS 7.37's open question).
# S = trained-short (2 epochs, flips), T = trained (10 epochs, crop); a queue (jobs131.txt), two workers at one thread each; worktree /work/wt131
cd /work/wt131
export PYTHONPATH=/work/wt131/src
C="--baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx"
Q=/work/runs/jobs131.txt
pop() { flock $Q.lock bash -c "head -1 $Q; sed -i 1d $Q"; }
worker() {
  while line=$(pop) && [ -n "$line" ]; do
    set -- $line; kind=$1; dir=/work/runs/$2; name=$3; shift 3
    case $kind in S) args="--preset trained-short $C";; *) args="--preset trained $C";; esac
    /usr/bin/time -v /work/main/.venv/bin/prunelab run $args --out-dir $dir "$@" --name $name > $dir/$name.log 2>&1
  done
}
worker & worker & wait
