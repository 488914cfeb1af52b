#!/bin/bash
# mobilenet_v3_small 64 px, 4x: the 10-epoch `trained` preset with and without reconstruction, seed 0, side by side at 1 thread (code 33287c1)
cd /work/main
B="--preset trained --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --out-dir /work/runs/mnv3"
run() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $B "$@" --name $n > /work/runs/mnv3/$n.log 2>&1; }
run t10-m1.45e6-s0 --seed 0 --target-macs 1.45e6 &
run rt10-m1.45e6-s0 --seed 0 --target-macs 1.45e6 --reconstruct-images 2560 &
wait
