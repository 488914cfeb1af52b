#!/bin/bash
# 1) remake 7.27's fixture45k (weights gone): 7.27's command; 2) 7.29 with the tilted search from it, then uniform
cd /work/main
/usr/bin/time -v .venv/bin/prunelab run --preset seed --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --seed 0 \
    --iterative-steps 1 --finetune-epochs-per-step 0 --final-finetune-epochs 0 --latency-batch-sizes 1 \
    --out-dir /work/runs --name fixture45k-b --no-progress --num-threads 2 --or-resume >> /work/runs/fixture45k-b.log 2>&1
echo "rc=$?" >> /work/runs/fixture45k-b.log
for alloc in tilted uniform; do for seed in 0 1; do
  extra=""; [ $alloc = tilted ] && extra="--allocation search"
  /usr/bin/time -v .venv/bin/prunelab run --preset full --baseline /work/runs/fixture45k-b/checkpoints/dense.safetensors \
      --data-dir ../shared/data/cifar10-jpeg --target-macs 5.29e6 --target-params 105428 --final-finetune-epochs 10 \
      --val-size 5000 --val-seed 0 $extra --seed $seed --no-progress --out-dir /work/runs/search105b \
      --name $alloc-s$seed --num-threads 2 --or-resume >> /work/runs/search105b-$alloc-s$seed.log 2>&1
  echo "rc=$?" >> /work/runs/search105b-$alloc-s$seed.log
done; done
