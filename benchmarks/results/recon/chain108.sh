#!/bin/bash
# 10x, 2 distilled epochs after a longer reconstruction (900 steps, 5,120 images), seeds 0 and 2 side by side, 1 thread each (code d34db5f+)
cd /work/main
B="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --distill --distill-cached --distill-views 2 --target-macs 5.57e7 --reconstruct-images 5120 --reconstruct-steps 900 --out-dir /work/runs/recf"
for s in 0 2; do /usr/bin/time -v .venv/bin/prunelab run $B --seed $s --name bigreckd-s$s > /work/runs/recf/bigreckd-s$s.log 2>&1 & done; wait
