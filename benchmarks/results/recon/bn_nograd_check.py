# The cost of the lost torch.no_grad() in train.reestimate_batchnorm (0e4437d-1718fa9): the fixed function against its
# undecorated body, side by side, twice. Run from the repository root: .venv/bin/python benchmarks/results/recon/bn_nograd_check.py
import time, torch, resource
from prunelab.config import make_config
from prunelab.models import build_model, InputSpec
from prunelab.data import Split
from prunelab.train import Trainer, reestimate_batchnorm
torch.manual_seed(0)
cfg = make_config("trained-short", {})
trainer = Trainer.from_config(cfg, torch.device("cpu"), InputSpec(32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), tuple("abcdefghij")))
model = build_model("resnet18_cifar", 10)
split = Split(torch.randint(0, 256, (1280, 3, 32, 32), dtype=torch.uint8), torch.zeros(1280, dtype=torch.long))
for rep in range(2):
    for name, f in (("no_grad (fixed)", reestimate_batchnorm), ("grad on (bug)", reestimate_batchnorm.__wrapped__)):
        t = time.perf_counter(); f(model, split, trainer, 1280, seed=0); print(rep, name, f"{time.perf_counter() - t:.2f} s", flush=True)
