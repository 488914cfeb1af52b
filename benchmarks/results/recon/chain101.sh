#!/bin/bash
# after chain99: 10x zero-epoch starts with fewer reconstruction steps / images (cost vs start)
while kill -0 17908 2>/dev/null; do sleep 10; done
cd /work/main
A="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --out-dir /work/runs/rec0 --no-export-onnx --final-finetune-epochs 0 --seed 0 --target-macs 5.57e7"
/usr/bin/time -v .venv/bin/prunelab run $A --reconstruct-images 2560 --reconstruct-steps 100 --name m5.57e7-st100 > /work/runs/rec0-st100.log 2>&1
/usr/bin/time -v .venv/bin/prunelab run $A --reconstruct-images 2560 --reconstruct-steps 300 --name m5.57e7-new > /work/runs/rec0-new.log 2>&1
