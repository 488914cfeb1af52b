#!/bin/bash
# mobilenet_v3_small 64 px: equal-time controls (3 plain epochs ~ reconstruction + 2) and seed 1, pairs side by side at 1 thread (code 33287c1)
cd /work/main
B="--preset trained-short --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --out-dir /work/runs/mnv3"
run() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $B "$@" --name $n > /work/runs/mnv3/$n.log 2>&1; }
for s in 0 1; do
run p3-m2.9e6-s$s --seed $s --target-macs 2.9e6 --final-finetune-epochs 3 &
run p3-m1.45e6-s$s --seed $s --target-macs 1.45e6 --final-finetune-epochs 3 &
wait
done
run r2-m2.9e6-s1 --seed 1 --target-macs 2.9e6 --reconstruct-images 2560 &
run r2-m1.45e6-s1 --seed 1 --target-macs 1.45e6 --reconstruct-images 2560 &
wait
