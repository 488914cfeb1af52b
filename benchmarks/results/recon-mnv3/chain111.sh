#!/bin/bash
# reconstruction on a trained non-ResNet: mobilenet_v3_small 64 px (76.97%), 2x and 4x fewer MACs, seed 0, pairs side by side at 1 thread
cd /work/main
B="--preset trained-short --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --seed 0 --out-dir /work/runs/mnv3"
run() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $B "$@" --name $n > /work/runs/mnv3/$n.log 2>&1; }
run r0-m2.9e6 --final-finetune-epochs 0 --target-macs 2.9e6 --reconstruct-images 2560 &
run r0-m1.45e6 --final-finetune-epochs 0 --target-macs 1.45e6 --reconstruct-images 2560 &
wait
run r2-m2.9e6 --target-macs 2.9e6 --reconstruct-images 2560 &
run p2-m2.9e6 --target-macs 2.9e6 &
wait
run r2-m1.45e6 --target-macs 1.45e6 --reconstruct-images 2560 &
run p2-m1.45e6 --target-macs 1.45e6 &
wait
