#!/bin/bash
# after chain86 (drawn-s1, then the clean-clone CI): the old search at seed 0
while pgrep -f chain86.sh > /dev/null; do sleep 15; done
cd /work/main
for spec in drawn-s0; do
  alloc=${spec%-s*}; seed=${spec##*-s}
  /usr/bin/time -v .venv/bin/prunelab run --preset full --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors \
      --data-dir ../shared/data/cifar10-jpeg --target-macs 5.29e6 --target-params 105428 --final-finetune-epochs 10 \
      --val-size 5000 --allocation search --no-fill-budget --seed $seed --no-progress --out-dir /work/runs/tilt105 \
      --name $spec --num-threads 2 --or-resume > /work/runs/tilt105-$spec.log 2>&1
  echo "rc=$?" >> /work/runs/tilt105-$spec.log
done
