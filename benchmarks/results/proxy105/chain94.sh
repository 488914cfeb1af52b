#!/bin/bash
# RESULTS 7.32: the same 16 candidates (seed 1, tilted) scored by a one-epoch proxy (all 45,000 training images,
# lr annealed to 0), then the run goes on with its pick; starts when chain93 ends
cd /work/main
while pgrep -f chain93.sh > /dev/null; do sleep 20; done
/usr/bin/time -v .venv/bin/prunelab run --preset full --baseline /work/runs/fixture45k-b/checkpoints/dense.safetensors \
    --data-dir ../shared/data/cifar10-jpeg --target-macs 5.29e6 --target-params 105428 --final-finetune-epochs 10 \
    --val-size 5000 --val-seed 0 --allocation search --search-train-images 45000 --seed 1 --no-progress \
    --out-dir /work/runs/proxy105 --name epoch-proxy-s1 --num-threads 2 --or-resume >> /work/runs/proxy105-epoch-proxy-s1.log 2>&1
echo "rc=$? $(date -u)" >> /work/runs/proxy105-epoch-proxy-s1.log
