"""prunelab: structured pruning of CNNs, end to end (train, prune, fine-tune, measure, report, export)."""
__version__ = "0.1.0"

from .config import PRESETS, Config, PrunelabError, make_config  # noqa: E402

__all__ = ["Config", "PRESETS", "PrunelabError", "make_config", "run", "load"]


def run(config: Config, resume_dir=None):
    """Run (or resume) the whole pipeline; returns the run directory. See prunelab.pipeline."""
    from .pipeline import run as _run
    return _run(config, resume_dir)


def load(path, device="cpu"):
    """Load a model saved by prunelab (.safetensors + .json) in any process: returns (model, description)."""
    from .export import load_model
    return load_model(path, device)
