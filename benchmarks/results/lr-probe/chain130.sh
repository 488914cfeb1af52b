#!/bin/bash
# ResNet-18 fixture at 2x, trained-short (2 epochs), final lr 0.01 against 0.02, seed 0, side by side at one thread each
cd /work/main
B="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 2.786e8 --out-dir /work/runs/lr2x --seed 0"
for lr in 0.01 0.02; do /usr/bin/time -v .venv/bin/prunelab run $B --final-finetune-lr $lr --name lr$lr > /work/runs/lr2x/lr$lr.log 2>&1 & done; wait
