#!/bin/bash
# takes over from chain89 (killed 23:26 UTC, its dense run 23324 left running): fixture45k-b reproduces fixture45k's
# epochs to the digit, so 7.29's uniform runs stand; rerun the searches with the tilt, and uniform seed 0 as a check
cd /work/main
while kill -0 23324 2>/dev/null; do sleep 20; done
echo "dense run ended $(date -u)" >> /work/runs/fixture45k-b.log
for run in tilted-s0 tilted-s1 uniform-s0; do
  seed=${run#*-s}; extra=""; [ ${run%-s*} = tilted ] && extra="--allocation search"
  /usr/bin/time -v .venv/bin/prunelab run --preset full --baseline /work/runs/fixture45k-b/checkpoints/dense.safetensors \
      --data-dir ../shared/data/cifar10-jpeg --target-macs 5.29e6 --target-params 105428 --final-finetune-epochs 10 \
      --val-size 5000 --val-seed 0 $extra --seed $seed --no-progress --out-dir /work/runs/search105b \
      --name $run --num-threads 2 --or-resume >> /work/runs/search105b-$run.log 2>&1
  echo "rc=$?" >> /work/runs/search105b-$run.log
done
