#!/bin/bash
cd /work/main
/usr/bin/time -v .venv/bin/python /work/runs/spread25.py run --preset full --baseline /work/runs/fixture45k-b/checkpoints/dense.safetensors \
    --data-dir ../shared/data/cifar10-jpeg --target-macs 5.29e6 --target-params 105428 --final-finetune-epochs 10 \
    --val-size 5000 --val-seed 0 --allocation search --seed 0 --no-progress --out-dir /work/runs/search105b \
    --name spread25-s0 --num-threads 2 --or-resume >> /work/runs/search105b-spread25-s0.log 2>&1
echo "rc=$?" >> /work/runs/search105b-spread25-s0.log
