#!/bin/bash
# final code. Lane B: 10x distilled + reconstruction seeds 0 1, 2x and 4x zero-epoch, distilled seed 2 (1 thread)
cd /work/main
B="--baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --reconstruct-images 2560"
for s in 0 1; do
/usr/bin/time -v .venv/bin/prunelab run --preset trained-short $B --distill --distill-cached --distill-views 2 --target-macs 5.57e7 --seed $s --out-dir /work/runs/recf --name reckd-s$s > /work/runs/recf/reckd-s$s.log 2>&1
done
for m in 2.786e8 1.393e8; do
/usr/bin/time -v .venv/bin/prunelab run --preset trained-short $B --final-finetune-epochs 0 --target-macs $m --seed 0 --out-dir /work/runs/rec0 --name f-m$m > /work/runs/rec0/f-m$m.log 2>&1
done
/usr/bin/time -v .venv/bin/prunelab run --preset trained-short $B --distill --distill-cached --distill-views 2 --target-macs 5.57e7 --seed 2 --out-dir /work/runs/recf --name reckd-s2 > /work/runs/recf/reckd-s2.log 2>&1
