"""prunelab: structured pruning of CNNs, end to end (train, prune, fine-tune, measure, report, export).

Python API (the CLI calls the same functions):

    import prunelab
    cfg = prunelab.make_config("quick", {"data_dir": "../shared/data/cifar10-jpeg"})
    run_dir = prunelab.run(cfg)                      # or prunelab.run(cfg, resume_dir=run_dir)
    model, desc = prunelab.load(run_dir)             # final model, rebuilt from safetensors + JSON
    prunelab.evaluate(model, desc["config"])         # test accuracy on the data the run used
    prunelab.measure(model)                          # params, MACs, CPU latency at batch 1 and 128
    prunelab.export_onnx(model, "model.onnx")
"""
__version__ = "0.1.0"

from .config import PRESETS, Config, make_config  # noqa: E402

from .errors import PrunelabError

__all__ = ["Config", "PRESETS", "PrunelabError", "make_config", "run", "load", "evaluate", "measure", "export_onnx"]


def run(config: Config | None = None, resume_dir=None, model=None):
    """Run the whole pipeline, or resume the run in `resume_dir` (config None, or one whose recipe equals the
    run's: only runtime settings may differ), with the config's seeds, controls and INT8; returns the run
    directory (the seeds' group folder with seeds)."""
    from .sweep import run as _run
    return _run(config, resume_dir, model)


def load(path, device="cpu", trust_pickle: bool = False, model=None, trust_code: bool = False):
    """Load a model saved by prunelab (a run directory's final model, .safetensors or .json): returns (model,
    description). trust_code: build it even if its file names a Python builder (package.module:function), which
    is imported and called; only for files you trust."""
    from .modelfile import load as _load
    from .rundir import model_file
    return _load(model_file(path), device, trust_pickle=trust_pickle, model=model, trust_code=trust_code)


def evaluate(model, config, split: str = "test") -> float:
    """Accuracy of `model` on the test (or val) split of the data that `config` (a Config or dict) describes."""
    import torch

    from .data import Normalizer, load_data
    from .train import score
    cfg = config if isinstance(config, Config) else make_config("seed", {**config, "baseline": ""})
    data = load_data(cfg)
    part = {"test": data.test, "val": data.val}.get(split)
    if part is None:
        raise PrunelabError(f"no '{split}' split (val needs val_size > 0)")
    device = next(model.parameters()).device
    if cfg.channels_last:  # evaluate exactly as the pipeline did, so recorded accuracies reproduce bit for bit
        model = model.to(memory_format=torch.channels_last)
    normalizer = Normalizer(data.inputs.mean, data.inputs.std, device, cfg.channels_last)
    return score(model, part.to(device), normalizer, cfg.eval_batch_size)["accuracy"]


def measure(model, batch_sizes=(1, 128), min_seconds: float = 1.0, image_size: int = 32) -> dict:
    """Params, MACs and CPU latency (median and p90, ms) of `model` on image_size x image_size inputs."""
    import torch

    from .measurement import measure_model
    return measure_model(model, batch_sizes=list(batch_sizes), devices=[torch.device("cpu")], warmup=3,
                         min_reps=5, min_seconds=min_seconds, channels_last=False, input_size=image_size)


def export_onnx(model, path, image_size: int = 32) -> dict:
    """Write an ONNX model (dynamic batch), checked by onnx.checker and against PyTorch (measurement.tolerance: 1e-4 +
    1e-4 x the largest logit). The model is exported from a copy: it keeps its dtype, device and mode."""
    from .export import export_onnx as _export
    return _export(model, path, input_size=image_size)
