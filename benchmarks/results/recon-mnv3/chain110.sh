#!/bin/bash
# a trained non-ResNet for the reconstruction: torchvision mobilenet_v3_small at 64 px, all of CIFAR-10 less a 5,000-image validation split, 8 epochs (code 8d839fe)
cd /work/main
/usr/bin/time -v .venv/bin/prunelab run --model mobilenet_v3_small --image-size 64 --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --epochs 8 --lr 0.1 --nesterov --label-smoothing 0.1 --lr-schedule-unit batch --iterative-steps 1 --pruning-ratio 0.05 --finetune-epochs-per-step 0 --final-finetune-epochs 0 --test-subset 0 --no-progress --num-threads 2 --no-export-onnx --out-dir /work/runs/mnv3 --name dense > /work/runs/mnv3/dense.log 2>&1
