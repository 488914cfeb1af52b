#!/bin/bash
# after chain104: 10x with 100 reconstruction steps per unit: zero epochs, and trained-short 2 epochs, seed 0
while kill -0 19230 2>/dev/null; do sleep 10; done
cd /work/main
B="--baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --reconstruct-images 2560 --reconstruct-steps 100"
/usr/bin/time -v .venv/bin/prunelab run --preset trained-short $B --target-macs 5.57e7 --seed 0 --out-dir /work/runs/recf --name rec100-s0 > /work/runs/recf/rec100-s0.log 2>&1
