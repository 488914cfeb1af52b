#!/bin/bash
# reconstruction from the whole training split (worktree /work/wt: self.train), 10x zero-epoch start, seed 0, 1 thread each, side by side
cd /work/main
B="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --final-finetune-epochs 0 --target-macs 5.57e7 --seed 0 --out-dir /work/runs/rectr"
PYTHONPATH=/work/wt/src /usr/bin/time -v .venv/bin/prunelab run $B --reconstruct-images 40000 --name tr300 > /work/runs/rectr/tr300.log 2>&1 &
PYTHONPATH=/work/wt/src /usr/bin/time -v .venv/bin/prunelab run $B --reconstruct-images 40000 --reconstruct-steps 900 --name tr900 > /work/runs/rectr/tr900.log 2>&1 &
wait
