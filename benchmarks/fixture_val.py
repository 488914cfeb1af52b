"""The dense fixture's accuracy on the 5,000-image validation split that `--val-size 5000` carves for seeds 0-2, and on
the test set: the fixture trained on all 50,000 training images, so the gap shows how much the validation split
flatters it (RESULTS 7.25). Usage: python benchmarks/fixture_val.py OUT.json (one thread; about 5 minutes)."""
import json, sys, torch
import prunelab
from prunelab.config import make_config
from prunelab.modelfile import load_any
from prunelab.models import ModelSpec
torch.set_num_threads(1)
out, test = {}, None
model, _ = load_any("../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors", ModelSpec("resnet18_cifar", 10))
model.eval()
for seed in (0, 1, 2):  # the split depends on the seed; the test set does not (scored once)
    cfg = make_config("trained", {"data_dir": "../shared/data/cifar10-jpeg", "val_size": 5000, "seed": seed,
                                  "baseline": "../shared/models/resnet18-cifar10jpeg-seedrecipe.safetensors"})
    test = test if test is not None else prunelab.evaluate(model, cfg, "test")
    out[f"seed{seed}"] = {"val": prunelab.evaluate(model, cfg, "val"), "test": test}
    print(seed, out[f"seed{seed}"], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
