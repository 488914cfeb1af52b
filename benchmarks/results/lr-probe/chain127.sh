#!/bin/bash
# lr probe check (RESULTS 7.37): short annealed fine-tunes at each rate from the checkpoint after the cut
cd /work/main
P=".venv/bin/python benchmarks/lr_probe_check.py --rates 0.005 0.01 0.02 0.04 0.08 0.1 --images 5000 10000 20000 --probe-seed 0 1 --num-threads 1"
$P /work/runs/mnv3lr/lr0.04-s0 --json /work/runs/lrprobe/mnv3-recon.json > /work/runs/lrprobe/mnv3-recon.log 2>&1 &
$P /work/runs/mnv3lr/p3lr0.04-s0 --json /work/runs/lrprobe/mnv3-plain.json > /work/runs/lrprobe/mnv3-plain.log 2>&1 &
wait
$P /work/runs/r105lr/r2lr0.04-s0 --json /work/runs/lrprobe/r105-recon.json > /work/runs/lrprobe/r105-recon.log 2>&1 &
$P /work/runs/r105lr/p3lr0.04-s0 --json /work/runs/lrprobe/r105-plain.json > /work/runs/lrprobe/r105-plain.log 2>&1 &
wait
