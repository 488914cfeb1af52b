#!/bin/bash
# mobilenet_v3_small 4x, distilled from the dense model (cached outputs, both mirrors): reconstruction + 2 distilled epochs vs 3 distilled epochs, seeds 0 1, pairs side by side at 1 thread (code 5a6149d)
cd /work/main
M="--preset trained-short --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --out-dir /work/runs/mnv3 --distill --distill-cached --distill-views 2 --target-macs 1.45e6"
m() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $M "$@" --name $n > /work/runs/mnv3/$n.log 2>&1; }
for s in 0 1; do
m kr2-m1.45e6-s$s --seed $s --reconstruct-images 2560 &
m kp3-m1.45e6-s$s --seed $s --final-finetune-epochs 3 &
wait
done
