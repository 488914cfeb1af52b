#!/bin/bash
# ResNet-18 cut once to 1.2e7 MACs: between 0.03 and 0.12 of the way from chance; reconstruction + 2 vs 3 plain epochs, seeds 0 1, pairs at 1 thread (code 71bd298)
cd /work/main
R="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 1.2e7 --out-dir /work/runs/r46"
mkdir -p /work/runs/r46
r() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $R "$@" --name $n > /work/runs/r46/$n.log 2>&1; }
for s in 0 1; do
r r2-s$s --seed $s --reconstruct-images 2560 &
r p3-s$s --seed $s --final-finetune-epochs 3 &
wait
done
