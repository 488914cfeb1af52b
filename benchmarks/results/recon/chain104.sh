#!/bin/bash
# final code. Lane A: 10x zero-epoch start, then trained-short + reconstruction seeds 0 1 2 (1 thread)
cd /work/main
B="--baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --reconstruct-images 2560"
/usr/bin/time -v .venv/bin/prunelab run --preset trained-short $B --final-finetune-epochs 0 --target-macs 5.57e7 --seed 0 --out-dir /work/runs/rec0 --name f-m5.57e7 > /work/runs/rec0/f-m5.57e7.log 2>&1
for s in 0 1 2; do
/usr/bin/time -v .venv/bin/prunelab run --preset trained-short $B --target-macs 5.57e7 --seed $s --out-dir /work/runs/recf --name rec-s$s > /work/runs/recf/rec-s$s.log 2>&1
done
