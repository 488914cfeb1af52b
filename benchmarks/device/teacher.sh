# A dense ResNet-18 teacher on all 50,000 CIFAR-10 (JPEG) training images, as many epochs as fit in ~7 minutes, for
# this workplace's lent GPU machine (RESULTS 7.14). Only the repo travels there, and at most 64 MiB of it, so first,
# here, in the repo root:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu
#   cp ../shared/data/cifar10-jpeg-packed/{images.bin,index.csv,unpack.py} .gpu/
#   python3 -m pip download --no-deps --only-binary=:all: -d .gpu/whl torch-pruning==1.6.1
# then the device tool's run with carry [".gpu"] and command `bash benchmarks/device/teacher.sh` (timeout_s 580).
# What comes back under $OUT: the run's log, metrics, dense.json and dense.safetensors in 15 MiB parts (files come
# back at most 16 MiB each): `cat dense.safetensors.part-* > dense.safetensors`, then check the sha256 in run.log.
export PYTHONUNBUFFERED=1
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torch_pruning, torchvision; print(torch.__version__, torchvision.__version__, torch_pruning.__version__)"
python3 .gpu/unpack.py /dev/shm/data || exit 1
echo "unpacked at +$(( $(date +%s) - T0 )) s"
LEFT=$(( 440 - ($(date +%s) - T0) ))
EPOCHS=$(python3 benchmarks/device/dense_epochs_probe.py $LEFT ${CAP:-120} | tee $OUT/probe.txt | tail -1)
cat $OUT/probe.txt
echo "probe done at +$(( $(date +%s) - T0 )) s; epochs=$EPOCHS"
[ -n "$EPOCHS" ] || exit 1
timeout $(( 520 - ($(date +%s) - T0) )) python3 -m prunelab run --device cuda --precision bf16 --no-progress \
  --data-dir /dev/shm/data --cache-dir /dev/shm/cache --out-dir /dev/shm/runs --name teacher-r18-e$EPOCHS \
  --epochs $EPOCHS --batch-size 128 --lr 0.1 --warmup-epochs 1 --nesterov --lr-schedule-unit batch --cutout-px 16 \
  --pruning-ratio 0.1 --iterative-steps 1 --finetune-epochs-per-step 0 --final-finetune-epochs 0 --no-export-onnx \
  --latency-batch-sizes 128 --latency-min-seconds 0.2 --no-measure-latency-every-step 2>&1 | tee $OUT/run.log
echo "run ended rc=${PIPESTATUS[0]} at +$(( $(date +%s) - T0 )) s"
R=/dev/shm/runs/teacher-r18-e$EPOCHS
ls -la $R $R/checkpoints
cp $R/metrics.jsonl $R/checkpoints/dense.json $OUT/ 2>/dev/null; cp $R/results.json $OUT/ 2>/dev/null
[ -f $R/checkpoints/dense.safetensors ] && (cd $OUT && split -b 15M $R/checkpoints/dense.safetensors dense.safetensors.part- && sha256sum $R/checkpoints/dense.safetensors | tee -a run.log)
ls -la $OUT
