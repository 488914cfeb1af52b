#!/bin/bash
# RESULTS 7.33: MLPerf Tiny's ResNet-8 trained 10 epochs, pruned to the seed's MACs (its 78 k params are under the cap) with `full`, and its scratch control
cd /work/main
export PYTHONPATH=$PWD/benchmarks
/usr/bin/time -v .venv/bin/prunelab run --preset full --model cifar_nets:resnet8 --epochs 10 \
  --target-macs 5.29e6 --controls scratch --data-dir ../shared/data/cifar10-jpeg \
  --out-dir /work/runs/blocks --name resnet8-full --no-progress --num-threads 2 --or-resume
