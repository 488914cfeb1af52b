#!/bin/bash
# After chain134 (the 2x scratch controls): (1) trained-short at lr 0.02 at 10x on 45,000 images, two seeds side by side
# (RESULTS 7 presets table gap); (2) the reshaped ResNet-8 at the seed's size with 300 final epochs of full-long's recipe, 2 threads.
while pgrep -f chain134.sh > /dev/null; do sleep 30; done
cd /work/wt135
export PYTHONPATH=/work/wt135/src
C="--baseline ../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors --data-dir ../shared/data/cifar10-jpeg --val-size 5000 --no-progress --num-threads 1 --no-export-onnx"
for s in 0 1; do
  /usr/bin/time -v /work/main/.venv/bin/prunelab run --preset trained-short $C --target-macs 5.57e7 --seed $s \
    --out-dir /work/runs/ts135 --name s10-lr0.02-s$s > /work/runs/ts135/s10-lr0.02-s$s.log 2>&1 &
done
wait
export PYTHONPATH=/work/wt135/src:/work/wt135/benchmarks
/usr/bin/time -v /work/main/.venv/bin/prunelab run --preset full-long --final-finetune-epochs 300 --model cifar_nets:resnet8 \
  --model-kwargs '{"width": 24, "first_stride": 2}' --epochs 10 --target-macs 5.29e6 --target-params 105428 \
  --data-dir ../shared/data/cifar10-jpeg --out-dir /work/runs/blocks --name resnet8s2-300 --no-progress --num-threads 2 \
  --or-resume --no-measure-latency-every-step > /work/runs/blocks/resnet8s2-300.log 2>&1
