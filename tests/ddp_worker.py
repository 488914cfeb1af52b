"""Run under torchrun by tests/test_distributed.py: train, prune (magnitude and Taylor) and evaluate with
DDP on synthetic data, then write what this rank ended with to <out>/rank<R>.json."""
import hashlib
import json
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from prunelab import distributed
from prunelab.config import make_config
from prunelab.data import load_data
from prunelab.modelfile import save as save_model
from prunelab.models import build_model
from prunelab.prune import build_pruner, history, layer_widths, prune_step
from prunelab.train import Trainer, make_optimizer, score, train_epoch

out = Path(sys.argv[1])
importance = sys.argv[2]
torch.set_num_threads(1)
world, _ = distributed.init("cpu")
cfg = make_config("tiny", {"importance": importance, "iterative_steps": 2, "progress": False})
data = load_data(cfg)
trainer = Trainer.from_config(cfg, torch.device("cpu"))
torch.manual_seed(world.rank)  # different initial weights on purpose: DDP must broadcast rank 0's
model = build_model("resnet18_cifar")
for k in range(2):
    net = DistributedDataParallel(model)
    train_epoch(net, data.train, make_optimizer(model, cfg, 0.05), None, trainer, torch.Generator().manual_seed(k))
    if k == 0:
        pruner = build_pruner(model, cfg)
    x = trainer.normalizer(data.train.images[:64])
    prune_step(pruner, model, [(x, data.train.labels[:64])] if importance == "taylor" else None)
    distributed.check_identical(model, f"after step {k + 1}")

digest = hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in model.state_dict().values()))
result = score(model, data.test, trainer.normalizer, 32)
(out / f"rank{world.rank}.json").write_text(json.dumps({
    "widths": layer_widths(model), "weights_sha256": digest.hexdigest(), "accuracy": result["accuracy"],
    "loss": result["loss"]}))
if world.main:
    save_model(out / "model", model, "resnet18_cifar", history(pruner))
del net  # DDP wrappers must go before the process group (see distributed.shutdown)
distributed.shutdown()
