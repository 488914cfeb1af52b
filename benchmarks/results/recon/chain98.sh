#!/bin/bash
# 10x, trained-short (2 epochs, flips only), seed 0: with block reconstruction after the cut, and without; side by side at 1 thread
cd /work/main
A="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --target-macs 5.57e7 --val-size 5000 --no-progress --num-threads 1 --out-dir /work/runs/rec --no-export-onnx"
/usr/bin/time -v .venv/bin/python benchmarks/reconstruct_probe.py --images 2560 --steps 300 -- $A --seed 0 --name rec-s0 > /work/runs/rec/rec-s0.log 2>&1 &
/usr/bin/time -v .venv/bin/prunelab run $A --seed 0 --name plain-s0 > /work/runs/rec/plain-s0.log 2>&1
wait
