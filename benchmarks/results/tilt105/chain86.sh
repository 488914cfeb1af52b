#!/bin/bash
# after tilted-s1 (chain84 stopped): the old search (candidates as drawn) at seed 1 only, then the clean-clone CI
while kill -0 15894 2>/dev/null; do sleep 10; done
cd /work/main
for spec in drawn-s1; do
  alloc=${spec%-s*}; seed=${spec##*-s}
  /usr/bin/time -v .venv/bin/prunelab run --preset full --baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors \
      --data-dir ../shared/data/cifar10-jpeg --target-macs 5.29e6 --target-params 105428 --final-finetune-epochs 10 \
      --val-size 5000 --allocation search --no-fill-budget --seed $seed --no-progress --out-dir /work/runs/tilt105 \
      --name $spec --num-threads 2 --or-resume > /work/runs/tilt105-$spec.log 2>&1
  echo "rc=$?" >> /work/runs/tilt105-$spec.log
done
rm -rf /work/ci-check && git clone -q /work/main /work/ci-check
cd /work/ci-check && git log --oneline -1 > /work/runs/ci86.log && CI=true /usr/bin/time -v bash .ci/run >> /work/runs/ci86.log 2>&1; echo "end rc=$?" >> /work/runs/ci86.log
