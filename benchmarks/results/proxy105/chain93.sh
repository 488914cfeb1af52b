#!/bin/bash
# RESULTS 7.32: the final accuracy of more of the tilted seed-1 search's candidates (7.31), each trained to the end
# as if the search had chosen it; candidates spread over the proxy's range, widest spread first
cd /work/main
for k in 7 14 2 10 6 4 1 5; do
  /usr/bin/time -v .venv/bin/python benchmarks/proxy_check.py run \
      --from benchmarks/results/search105b/tilted-s1/search.jsonl --candidate $k -- \
      --preset full --baseline /work/runs/fixture45k-b/checkpoints/dense.safetensors \
      --data-dir ../shared/data/cifar10-jpeg --target-macs 5.29e6 --target-params 105428 --final-finetune-epochs 10 \
      --val-size 5000 --val-seed 0 --allocation search --seed 1 --no-progress --out-dir /work/runs/proxy105 \
      --name cand$k --num-threads 2 --or-resume >> /work/runs/proxy105-cand$k.log 2>&1
  echo "rc=$? $(date -u)" >> /work/runs/proxy105-cand$k.log
done
