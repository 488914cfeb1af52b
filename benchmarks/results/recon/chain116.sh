#!/bin/bash
# ResNet-18 cut once to 2e7 MACs (~28x): between the measured near-chance (0.03-0.06 of the way) and half-way (0.45-0.52) cuts; reconstruction + 2 vs 3 plain epochs, seeds 0 1, pairs at 1 thread (code ad5c6d9)
cd /work/main
R="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 2e7 --out-dir /work/runs/r28"
mkdir -p /work/runs/r28
r() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $R "$@" --name $n > /work/runs/r28/$n.log 2>&1; }
for s in 0 1; do
r r2-s$s --seed $s --reconstruct-images 2560 &
r p3-s$s --seed $s --final-finetune-epochs 3 &
wait
done
