#!/bin/bash
# 10x, reconstruction (2,560 images drawn from all training ones, 300 steps) + 2 distilled epochs, seed 0: the final lr
# 0.01 (trained-short's) against 0.005, 0.02 and 0.003, two runs side by side at one thread each (code a621d05)
cd /work/main
B="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --distill --distill-cached --distill-views 2 --target-macs 5.57e7 --reconstruct-images 2560 --out-dir /work/runs/reclr --seed 0"
for lr in 0.005 0.02; do /usr/bin/time -v .venv/bin/prunelab run $B --final-finetune-lr $lr --name lr$lr > /work/runs/reclr/lr$lr.log 2>&1 & done; wait
for lr in 0.01 0.003; do /usr/bin/time -v .venv/bin/prunelab run $B --final-finetune-lr $lr --name lr$lr > /work/runs/reclr/lr$lr.log 2>&1 & done; wait
