# What the seed-size student reaches with a strong teacher distilled on every augmented batch, against the same
# student without distillation (RESULTS 7.15), for this workplace's lent GPU machine: a dense resnet18_cifar trained
# there (the fixture and the 92.69% teacher cannot travel with the data: 64 MiB), then two `full-long` students from
# it side by side, with and without `--distill`, as many final epochs as the student probe says fit (at most 120).
# Prepare as benchmarks/device/teacher.sh says (.gpu/ with the packed data and the torch-pruning wheel), then the
# device tool's run with carry [".gpu"], command `bash benchmarks/device/ceiling.sh`, timeout_s 590 (RESULTS 7.15 then ran
# `FINAL=48 BUDGET=400 bash benchmarks/device/ceiling.sh` at once on the warm machine: its dense model is reused).
# Dry run on a CPU: DEV=cpu DATA=../shared/data/cifar10-jpeg OUT=/tmp/out BUDGET=600 DENSE_EPOCHS=1 \
#   EXTRA="--train-subset 1000 --test-subset 500" bash benchmarks/device/ceiling.sh
export PYTHONUNBUFFERED=1
T0=$(date +%s)
DEV=${DEV:-cuda}; BUDGET=${BUDGET:-545}; DENSE_EPOCHS=${DENSE_EPOCHS:-30}; DENSE_RESERVE=${DENSE_RESERVE:-170}
el() { echo $(( $(date +%s) - T0 )); }
if [ -z "$DATA" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 .gpu/unpack.py /dev/shm/data || exit 1
  DATA=/dev/shm/data; PY=python3; W=/dev/shm
else
  export PYTHONPATH=$PWD/src; PY=${PY:-.venv/bin/python}; W=$(mktemp -d)
fi
$PY -c "import torch, torch_pruning, torchvision; print(torch.__version__, torchvision.__version__, torch_pruning.__version__)"
echo "ready at +$(el) s"
D=$W/runs/dense-e$DENSE_EPOCHS/checkpoints/dense.safetensors
[ -f $D ] && DENSE_RESERVE=0  # a warm machine that ran this before keeps its dense model: FINAL=48 bash ... again
# the students' epochs (FINAL to fix them), sized before the dense run so that both fit: what is left after it and
# 30 s of their setup
if [ -z "$FINAL" ]; then
  FINAL=$(PROBE_DEVICE=$DEV $PY benchmarks/device/student_epochs_probe.py $(( BUDGET - $(el) - DENSE_RESERVE - 30 )) \
          ${CAP:-120} 2 | tee $OUT/probe.txt | tail -1)
  cat $OUT/probe.txt
fi
echo "final epochs ${FINAL:?no epoch count} at +$(el) s"
common="--device $DEV --precision bf16 --no-progress --data-dir $DATA --cache-dir $W/cache --out-dir $W/runs $EXTRA
        --no-export-onnx --latency-batch-sizes 128 --latency-min-seconds 0.2 --no-measure-latency-every-step"
if [ ! -f $D ]; then
  timeout $(( BUDGET - $(el) )) $PY -m prunelab run $common --name dense-e$DENSE_EPOCHS --epochs $DENSE_EPOCHS \
    --batch-size 128 --lr 0.1 --warmup-epochs 1 --nesterov --lr-schedule-unit batch --cutout-px 16 \
    --pruning-ratio 0.1 --iterative-steps 1 --finetune-epochs-per-step 0 --final-finetune-epochs 0 > $OUT/dense.log 2>&1
  echo "dense rc=$? at +$(el) s"; tail -4 $OUT/dense.log
fi
[ -f $D ] || exit 1
for kind in kd plain; do
  flag=$([ $kind = kd ] && echo --distill || echo --no-distill)
  timeout $(( BUDGET - $(el) )) $PY -m prunelab run --preset full-long $common --baseline $D $flag \
    --final-finetune-epochs $FINAL --name e$FINAL-$kind > $OUT/e$FINAL-$kind.log 2>&1 &
done
wait
echo "students done at +$(el) s"
for kind in kd plain; do echo "== $kind"; grep -E '^(dense|step|final):' $OUT/e$FINAL-$kind.log; grep 'epoch [0-9]*/' $OUT/e$FINAL-$kind.log | tail -1; done
(cd $W/runs && tar czf $OUT/runs.tgz --exclude='*.safetensors' --exclude='*.onnx' .)
ls -la $OUT
