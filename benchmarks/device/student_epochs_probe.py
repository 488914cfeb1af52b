"""How many final fine-tune epochs of the seed-size student (resnet18_cifar with 90% of every layer's channels cut,
the `full` presets' architecture; prunelab's loop: batch 128, bf16) fit in SECONDS on this machine when RUNS such
runs share it, with a 25% margin, at most CAP: one timed epoch of 12,800 random images with distillation from a dense
resnet18_cifar on every batch (the slower of the two kinds), after a warm-up. Prints the speeds, then the epoch count
on the last line.

    python benchmarks/device/student_epochs_probe.py SECONDS CAP RUNS      (PROBE_DEVICE=cpu to try it on a CPU)
"""
import os, sys, time, torch
from prunelab.config import make_config
from prunelab.data import Split
from prunelab.models import build_model
from prunelab.prune import prune_once
from prunelab.train import Distillation, Trainer, make_optimizer, prepare_model, train_epoch

seconds, cap, runs = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dev = torch.device(os.environ.get("PROBE_DEVICE", "cuda"))
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
cfg = make_config("full-long", {"device": dev.type, "precision": "bf16", "nesterov": True, "progress": False})
trainer = Trainer.from_config(cfg, dev)
dense = build_model("resnet18_cifar")
student = prepare_model(prune_once(dense, cfg, 0.9), trainer)
teacher = prepare_model(dense, trainer).eval()
opt = make_optimizer(student, cfg, 0.2)
g = torch.Generator().manual_seed(0)
n = 12800 if dev.type == "cuda" else 1280
data = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=dev), torch.randint(0, 10, (n,), device=dev))
kd = Distillation(4.0, 0.5, teacher=teacher)
train_epoch(student, data.subset(torch.arange(n // 5, device=dev)), opt, None, trainer, g, distill=kd)
speeds = {}
for name, distill in (("plain", None), ("distilled", kd)):
    sync(); t = time.perf_counter()
    train_epoch(student, data, opt, None, trainer, g, distill=distill)
    sync(); speeds[name] = n / (time.perf_counter() - t)
epoch_s = 50000 / speeds["distilled"] * runs  # runs sharing the GPU: assume no overlap at all
epochs = max(1, min(cap, int(seconds / (epoch_s * 1.25))))
print(", ".join(f"{k} {v:.0f} img/s" for k, v in speeds.items()) + f"; {runs} runs -> {epoch_s:.2f} s an epoch "
      f"-> {epochs} epochs in {seconds:.0f} s")
print(epochs)
