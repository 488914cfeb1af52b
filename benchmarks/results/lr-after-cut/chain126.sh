#!/bin/bash
# MobileNetV3-small 64px, 4x, `--preset trained` (10 epochs with the crop, no reconstruction): seed 1, final lr 0.04 and 0.01
# against 7.35's 0.01 (74.12%, seed 0), side by side at one thread each

cd /work/main
M="--preset trained --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --out-dir /work/runs/mnv3lr --target-macs 1.45e6 --seed 1"
for lr in 0.04 0.01; do /usr/bin/time -v .venv/bin/prunelab run $M --final-finetune-lr $lr --name t10lr$lr-s1 > /work/runs/mnv3lr/t10lr$lr-s1.log 2>&1 & done; wait
