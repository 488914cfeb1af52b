#!/bin/bash
# --lr-probe end to end (RESULTS 7.37), second round: F = ResNet-18 10x with --preset trained (10 epochs); M = MobileNetV3 4x; (R, T as in chain128.sh)
# trained-short, a queue (jobs129.txt), two workers at one thread each; code 05458e5 (worktree /work/wt129)
cd /work/wt129
export PYTHONPATH=/work/wt129/src
R="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 5.29e6 --target-params 105428"
M="--preset trained-short --model mobilenet_v3_small --image-size 64 --baseline /work/runs/mnv3/dense/checkpoints/dense.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 1.45e6"
T="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --distill --distill-cached --distill-views 2 --target-macs 5.57e7 --reconstruct-images 2560"
F="--preset trained --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 5.57e7"
Q=/work/runs/jobs129.txt
pop() { flock $Q.lock bash -c "head -1 $Q; sed -i 1d $Q"; }
worker() {
  while line=$(pop) && [ -n "$line" ]; do
    set -- $line; kind=$1; dir=/work/runs/$2; name=$3; shift 3
    case $kind in F) args=$F;; R) args=$R;; T) args=$T;; *) args=$M;; esac
    /usr/bin/time -v /work/main/.venv/bin/prunelab run $args --out-dir $dir "$@" --name $name > $dir/$name.log 2>&1
  done
}
worker & worker & wait
