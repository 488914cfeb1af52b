#!/bin/bash
# bf16 reconstruction (worktree /work/wt), 10x zero-epoch start, seed 0, 1 thread
cd /work/main
B="--baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --reconstruct-images 2560"
PYTHONPATH=/work/wt/src /usr/bin/time -v .venv/bin/prunelab run --preset trained-short $B --final-finetune-epochs 0 --target-macs 5.57e7 --seed 0 --out-dir /work/runs/rec0 --name bf16-m5.57e7 > /work/runs/rec0/bf16-m5.57e7.log 2>&1
PYTHONPATH=/work/wt/src /usr/bin/time -v .venv/bin/prunelab run --preset trained-short $B --target-macs 5.57e7 --seed 0 --out-dir /work/runs/recf --name bf16-rec-s0 > /work/runs/recf/bf16-rec-s0.log 2>&1
