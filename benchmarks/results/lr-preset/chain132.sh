#!/bin/bash
# trained-distilled at 10x, final lr 0.01 against 0.02 (the preset's since 03ba6df), seed 0, side by side at one thread each; commit 2ef0716
cd /work/main
B="--preset trained-distilled --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --target-macs 5.57e7 --no-progress --num-threads 1 --no-export-onnx --out-dir /work/runs/td132 --seed 0"
for lr in 0.01 0.02; do /usr/bin/time -v .venv/bin/prunelab run $B --final-finetune-lr $lr --name td-lr$lr > /work/runs/td132/td-lr$lr.log 2>&1 & done; wait
