#!/bin/bash
# 10x, 2 epochs with reconstruction: distilled (7.22's recipe) seed 0, then plain seeds 1, 2; 1 thread
cd /work/main
A="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --target-macs 5.57e7 --val-size 5000 --no-progress --num-threads 1 --out-dir /work/runs/rec --no-export-onnx --reconstruct-images 2560"
/usr/bin/time -v .venv/bin/prunelab run $A --distill --distill-cached --distill-views 2 --seed 0 --name reckd-s0 > /work/runs/rec/reckd-s0.log 2>&1
for s in 1 2; do /usr/bin/time -v .venv/bin/prunelab run $A --seed $s --name rec-s$s > /work/runs/rec/rec-s$s.log 2>&1; done
