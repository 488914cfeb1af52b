#!/bin/bash
# (1) mobilenet_v3_small 4x, seed 2: reconstruction + 2 vs 3 plain epochs; (2) ResNet-18 cut once to the seed's size (fresh BN near chance: the tip's case) with trained-short: reconstruction + 2 vs 3 plain epochs, seeds 0 1; pairs side by side at 1 thread (code 742132c)
cd /work/main
M="--preset trained-short --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --out-dir /work/runs/mnv3"
R="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 5.29e6 --target-params 105428 --out-dir /work/runs/r105"
mkdir -p /work/runs/r105
m() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $M "$@" --name $n > /work/runs/mnv3/$n.log 2>&1; }
r() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $R "$@" --name $n > /work/runs/r105/$n.log 2>&1; }
m r2-m1.45e6-s2 --seed 2 --target-macs 1.45e6 --reconstruct-images 2560 &
m p3-m1.45e6-s2 --seed 2 --target-macs 1.45e6 --final-finetune-epochs 3 &
wait
for s in 0 1; do
r r2-s$s --seed $s --reconstruct-images 2560 &
r p3-s$s --seed $s --final-finetune-epochs 3 &
wait
done
r p2-s0 --seed 0 &
r r0-s0 --seed 0 --reconstruct-images 2560 --final-finetune-epochs 0 &
wait
