#!/bin/bash
# RESULTS 7.33: a ResNet-8 shape built for both caps (first stage at 16 x 16), 24 wide, pruned to both caps with `full`
cd /work/main
export PYTHONPATH=$PWD/benchmarks
/usr/bin/time -v .venv/bin/prunelab run --preset full --model cifar_nets:resnet8 --model-kwargs '{"width": 24, "first_stride": 2}' \
  --epochs 10 --target-macs 5.29e6 --target-params 105428 --controls scratch --data-dir ../shared/data/cifar10-jpeg \
  --out-dir /work/runs/blocks --name resnet8s2-full --no-progress --num-threads 2 --or-resume
