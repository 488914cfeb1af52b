#!/bin/bash
# RESULTS 7.33's next probe: the ResNet-8 shape built for both caps with full-long's 120 final epochs (against 2.4's 84.29%)
cd /work/main
export PYTHONPATH=$PWD/benchmarks
/usr/bin/time -v .venv/bin/prunelab run --preset full-long --model cifar_nets:resnet8 --model-kwargs '{"width": 24, "first_stride": 2}' \
  --epochs 10 --target-macs 5.29e6 --target-params 105428 --data-dir ../shared/data/cifar10-jpeg \
  --out-dir /work/runs/blocks --name resnet8s2-full-long --no-progress --num-threads 2 --or-resume --no-measure-latency-every-step
