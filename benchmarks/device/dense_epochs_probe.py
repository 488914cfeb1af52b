"""How many epochs of dense ResNet-18 training on 50,000 images (prunelab's loop: batch 128, bf16, cutout) fit in
SECONDS on this machine, with a 25% margin, at most CAP: one timed epoch of 12,800 random images and one
10,000-image evaluation, after a warm-up. Prints the measured speeds, then the epoch count on the last line.

    python benchmarks/device/dense_epochs_probe.py SECONDS CAP      (PROBE_DEVICE=cpu to try it on a CPU)
"""
import os, sys, time, torch
from prunelab.config import make_config
from prunelab.data import Split
from prunelab.models import build_model
from prunelab.train import Trainer, make_optimizer, prepare_model, score, train_epoch

seconds, cap = float(sys.argv[1]), int(sys.argv[2])
dev = torch.device(os.environ.get("PROBE_DEVICE", "cuda"))
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
cfg = make_config("seed", {"device": dev.type, "precision": "bf16", "cutout_px": 16, "nesterov": True, "progress": False})
trainer = Trainer.from_config(cfg, dev)
model = prepare_model(build_model("resnet18_cifar"), trainer)
opt = make_optimizer(model, cfg, 0.05)
g = torch.Generator().manual_seed(0)
data = Split(torch.randint(0, 256, (12800, 3, 32, 32), dtype=torch.uint8, device=dev), torch.randint(0, 10, (12800,), device=dev))
train_epoch(model, data.subset(torch.arange(2560, device=dev)), opt, None, trainer, g)
sync(); t = time.perf_counter()
stats = train_epoch(model, data, opt, None, trainer, g)
sync(); train_s = time.perf_counter() - t
t = time.perf_counter(); score(model, Split(data.images[:10000], data.labels[:10000]), trainer.normalizer, 500); sync()
eval_s = time.perf_counter() - t
epoch_s = train_s * 50000 / 12800 + eval_s
epochs = max(1, min(cap, int(seconds / (epoch_s * 1.25))))
print(f"train {12800 / train_s:.0f} img/s, eval {eval_s:.2f} s, epoch {epoch_s:.2f} s -> {epochs} epochs in {seconds:.0f} s")
print(epochs)
