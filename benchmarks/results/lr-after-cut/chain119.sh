#!/bin/bash
# iterative cuts, each refitted (reconstruction, no epoch between): the start at 105x (seed's size) and at 10x, then
# 105x + 2 epochs; against one cut (r105/r0-s0 55.63%, r2-s0 76.57%; 10x 81.33%). Two side by side at one thread each.
while pgrep -f chain118.sh > /dev/null; do sleep 20; done
cd /work/main
B="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --reconstruct-images 2560 --out-dir /work/runs/ritr --seed 0"
S="--target-macs 5.29e6 --target-params 105428"
r() { n=$1; shift; /usr/bin/time -v .venv/bin/prunelab run $B "$@" --name $n > /work/runs/ritr/$n.log 2>&1; }
r s105-4-e0 $S --iterative-steps 4 --final-finetune-epochs 0 &
r s10-2-e0 --target-macs 5.57e7 --iterative-steps 2 --final-finetune-epochs 0 &
wait
r s105-4-e2 $S --iterative-steps 4 &
r s105-8-e0 $S --iterative-steps 8 --final-finetune-epochs 0 &
wait
