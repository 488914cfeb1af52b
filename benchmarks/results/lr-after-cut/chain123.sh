#!/bin/bash
# ResNet-18 cut once to the seed's size (105x), trained-short: 3 plain epochs against reconstruction + 2 at a higher
# final lr (7.35 measured both at 0.01: 75.06 against 76.43); a queue (jobs123.txt), two workers at one thread; d17c78d
while pgrep -f "chain122.sh" > /dev/null; do sleep 15; done
cd /work/main
R="--preset trained-short --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx --target-macs 5.29e6 --target-params 105428 --out-dir /work/runs/r105lr"
mkdir -p /work/runs/r105lr
Q=/work/runs/jobs123.txt
pop() { flock $Q.lock bash -c "head -1 $Q; sed -i 1d $Q"; }
worker() {
  while line=$(pop) && [ -n "$line" ]; do
    set -- $line; name=$1; shift
    /usr/bin/time -v .venv/bin/prunelab run $R "$@" --name $name > /work/runs/r105lr/$name.log 2>&1
  done
}
worker & worker & wait
