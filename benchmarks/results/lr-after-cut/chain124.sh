#!/bin/bash
# seeds for the best-lr comparisons: ResNet-18 at 105x (R) and MobileNetV3 at 4x (M), trained-short, a queue
# (jobs124.txt: kind, folder, name, arguments), two workers at one thread each; code d17c78d
cd /work/main
R="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 5.29e6 --target-params 105428"
M="--preset trained-short --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 1.45e6"
Q=/work/runs/jobs124.txt
pop() { flock $Q.lock bash -c "head -1 $Q; sed -i 1d $Q"; }
worker() {
  while line=$(pop) && [ -n "$line" ]; do
    set -- $line; kind=$1; dir=/work/runs/$2; name=$3; shift 3
    if [ $kind = R ]; then args=$R; else args=$M; fi
    /usr/bin/time -v .venv/bin/prunelab run $args --out-dir $dir "$@" --name $name > $dir/$name.log 2>&1
  done
}
worker & worker & wait
