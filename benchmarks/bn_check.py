"""Test accuracy of a run's dense checkpoint with its recorded batch-norm statistics and with statistics
re-estimated on 2,560 training images (prunelab's train.reestimate_batchnorm). Usage: bn_check.py RUN_DIR [...]"""
import json
import sys

from prunelab import modelfile
from prunelab.config import config_from_dict
from prunelab.data import load_data
from prunelab.train import Trainer, reestimate_batchnorm, score, prepare_model
import torch
for run in sys.argv[1:]:
    cfg = config_from_dict(json.load(open(f"{run}/config.json")))
    data = load_data(cfg)
    trainer = Trainer.from_config(cfg, torch.device("cpu"), data.inputs)
    model, _ = modelfile.load(f"{run}/checkpoints/dense.json")
    model = prepare_model(model, trainer)
    before = score(model, data.test, trainer.normalizer, 500)["accuracy"]
    reestimate_batchnorm(model, data.train, trainer, 2560, 0)
    after = score(model, data.test, trainer.normalizer, 500)["accuracy"]
    print(run, f"recorded statistics {before:.4f}  re-estimated {after:.4f}")
