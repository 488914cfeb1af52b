#!/bin/bash
# a queue of runs (jobs122.txt, one per line: R = ResNet-18 10x reconstruction + 2 distilled epochs, M = MobileNetV3
# 4x reconstruction + 2 epochs), two workers at one thread each; code d17c78d
cd /work/main
R="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --distill --distill-cached --distill-views 2 --target-macs 5.57e7 --reconstruct-images 2560 --out-dir /work/runs/reclr"
M="--preset trained-short --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --out-dir /work/runs/mnv3lr --target-macs 1.45e6 --reconstruct-images 2560"
mkdir -p /work/runs/mnv3lr
Q=/work/runs/jobs122.txt
pop() { flock $Q.lock bash -c "head -1 $Q; sed -i 1d $Q"; }
worker() {
  while line=$(pop) && [ -n "$line" ]; do
    set -- $line; kind=$1; name=$2; shift 2
    if [ $kind = R ]; then args=$R; dir=/work/runs/reclr; else args=$M; dir=/work/runs/mnv3lr; fi
    /usr/bin/time -v .venv/bin/prunelab run $args "$@" --name $name > $dir/$name.log 2>&1
  done
}
worker & 
while pgrep -f "chain119.sh" > /dev/null; do sleep 20; done
worker &
wait
