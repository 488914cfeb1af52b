#!/bin/bash
# 10x, 2 epochs distilled (cached, 2 views) with reconstruction, seed 1; after chain pid 18414
while kill -0 18414 2>/dev/null; do sleep 10; done
cd /work/main
A="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --target-macs 5.57e7 --val-size 5000 --no-progress --num-threads 1 --out-dir /work/runs/rec --no-export-onnx --reconstruct-images 2560"
/usr/bin/time -v .venv/bin/prunelab run $A --distill --distill-cached --distill-views 2 --seed 1 --name reckd-s1 > /work/runs/rec/reckd-s1.log 2>&1
