#!/bin/bash
# the seed's size from the shared fixture (val split leaky), 10 final epochs: uniform vs tilted search (vs old search)
while pgrep -f ci83.sh > /dev/null; do sleep 20; done
cd /work/main
for spec in uniform-s0 tilted-s0 uniform-s1 tilted-s1 drawn-s0 drawn-s1; do
  alloc=${spec%-s*}; seed=${spec##*-s}
  extra=""; [ $alloc = tilted ] && extra="--allocation search"; [ $alloc = drawn ] && extra="--allocation search --no-fill-budget"
  /usr/bin/time -v .venv/bin/prunelab run --preset full --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors \
      --data-dir ../shared/data/cifar10-jpeg --target-macs 5.29e6 --target-params 105428 --final-finetune-epochs 10 \
      --val-size 5000 $extra --seed $seed --no-progress --out-dir /work/runs/tilt105 \
      --name $spec --num-threads 2 --or-resume > /work/runs/tilt105-$spec.log 2>&1
  echo "rc=$?" >> /work/runs/tilt105-$spec.log
done
