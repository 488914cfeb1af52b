#!/bin/bash
# zero-epoch starts with the product flag: 10x (check against the probe's 81.23%), 2x, 4x, 105x
cd /work/main
A="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --out-dir /work/runs/rec0 --no-export-onnx --final-finetune-epochs 0 --reconstruct-images 2560 --seed 0"
for m in 5.57e7 2.786e8 1.393e8 5.3e6; do
/usr/bin/time -v .venv/bin/prunelab run $A --target-macs $m --name m$m > /work/runs/rec0-m$m.log 2>&1
done
