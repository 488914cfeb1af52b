"""Starting weights from elsewhere, for the dense stage to train from (transfer learning):
- `--pretrained [NAME]`: the weights torchvision or timm publish, read through the libraries' own caches (torch hub's
  checkpoints folder; the Hugging Face cache), downloaded there where a network exists;
- `--init-from FILE`: a state dict for the same network with any classifier (.safetensors, torchvision/timm naming, a
  DDP "module." prefix dropped), a prunelab model file, or (with --trust-pickle only) a pickled checkpoint.
Both load every tensor whose name and shape match, leave the classifier freshly initialised for the data's classes,
and say in one line what was loaded and what was skipped. A file that fits less than half of the backbone is another
architecture, and is refused. The run's model files never refer to the source again: a pruned model made from
transferred weights loads in a fresh process without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from .distributed import log
from .errors import PrunelabError
from .modelfile import PICKLE_SUFFIXES, describe, read_state_dict, specs, without_ddp_prefix
from .models import ModelSpec, build, classifier, pretrained_weights

MIN_BACKBONE_SHARE = 0.5  # below this share of the backbone's tensors matched, the file is another architecture


def _torchvision_state(entry) -> dict:
    """The state dict of a torchvision weights enum member, from torch hub's cache (downloaded into it when missing
    and a network exists), unpickled with torch.load(weights_only=True): tensors only, no code."""
    url = entry.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, weights_only=True,
                                                  map_location="cpu")
    except OSError as e:  # urllib's URLError (no network) is an OSError
        raise PrunelabError(f"--pretrained: {path.name} is not in torch's cache and could not be downloaded "
                            f"({getattr(e, 'reason', e)}); download {url} where a network exists and put it at {path}")
    except RuntimeError as e:  # a damaged cached file, or a download whose hash does not match
        raise PrunelabError(f"--pretrained: cannot read {path} ({str(e).splitlines()[0][:120]}); delete it and "
                            f"download {url} again")


def _timm_state(full_name: str, kwargs: dict) -> dict:
    """The state dict of timm's `arch.tag` weights, built by timm from its cache (Hugging Face hub; downloaded into it
    when missing and a network exists)."""
    import timm
    cfg = timm.models.get_pretrained_cfg(full_name)
    where = (f"the Hugging Face cache ({_hf_cache()}) as repo {cfg.hf_hub_id}" if cfg.hf_hub_id
             else f"torch's cache ({Path(torch.hub.get_dir()) / 'checkpoints'}) from {cfg.url}")
    try:
        return timm.create_model(full_name, pretrained=True, **kwargs).state_dict()
    except Exception as e:  # huggingface_hub's offline errors have no common base class but Exception
        raise PrunelabError(f"--pretrained: timm's weights {full_name} are not in {where} and could not be downloaded "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:100]}); fetch them where a network exists "
                            "and copy that cache here") from None


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


def pretrained_state(spec: ModelSpec, weights: str) -> tuple[dict, str]:
    """The published state dict that --pretrained `weights` names for `spec`'s model, and its name for the report."""
    entry = pretrained_weights(spec.builder, weights)
    if isinstance(entry, str):
        return _timm_state(entry, spec.kwargs), f"timm {entry}"
    return _torchvision_state(entry), f"torchvision {type(entry).__name__}.{entry.name}"


def file_state(path: str | Path, trust_pickle: bool = False) -> tuple[dict, dict | None]:
    """The tensors of an --init-from file: a .safetensors state dict, a prunelab model file (its weights; pruned files
    too, though their shapes will rarely fit), or a pickled checkpoint when trust_pickle (a state dict, a dict holding
    one under "state_dict"/"model", or a whole nn.Module); and a prunelab model file's description (else None)."""
    p = Path(path)
    if not p.is_file():  # (checked here, not in config.py: a resumed run whose dense stage is done needs no file)
        raise PrunelabError(f"init_from file not found: {p}; pass a .safetensors state dict or a prunelab model file")
    if p.suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise PrunelabError(f"{p} looks like a pickle, which can run code when loaded; convert it to safetensors "
                                "(safetensors.torch.save_file(state_dict, 'weights.safetensors')), or pass "
                                "--trust-pickle for a file you made yourself")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # a damaged pickle raises anything from UnpicklingError to EOFError
            raise PrunelabError(f"cannot read {p} ({type(e).__name__}); the file is damaged")
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        for key in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
            raise PrunelabError(f"{p} holds no state dict of tensors; save model.state_dict() with safetensors")
        return dict(obj), None
    if p.suffix == ".json" or p.with_suffix(".json").is_file():
        desc, weights = describe(p)
        return read_state_dict(weights), desc
    if p.suffix != ".safetensors":
        raise PrunelabError(f"{p} is neither a .safetensors state dict nor a prunelab model file (.json); convert it "
                            "with safetensors.torch.save_file")
    return read_state_dict(p), None


def load_matching(model: nn.Module, state: dict, source: str) -> dict:
    """Copy into `model` every tensor of `state` whose name and shape match, except the classifier's (it stays as
    built: freshly initialised for the data's classes). Refuses a state that fits less than MIN_BACKBONE_SHARE of
    the backbone's tensors. Returns what was loaded and skipped (for the log and the report)."""
    state = without_ddp_prefix(state)
    own = model.state_dict()
    head_module = classifier(model)
    head = {f"{n}.{k}" for n, m in model.named_modules() if m is head_module for k, _ in m.named_parameters()}
    backbone = [k for k in own if k not in head and not k.endswith("num_batches_tracked")]
    loaded = [k for k in backbone if k in state and tuple(state[k].shape) == tuple(own[k].shape)]
    shape = [k for k in backbone if k in state and k not in loaded]
    absent = [k for k in backbone if k not in state]
    unused = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    if len(loaded) < MIN_BACKBONE_SHARE * len(backbone):
        raise PrunelabError(f"{source} fits only {len(loaded)} of the model's {len(backbone)} backbone tensors "
                            f"(e.g. {(shape + absent)[0]} {'has another shape' if shape else 'is not in it'}): it holds "
                            "another architecture; pass weights of this --model")
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state[k].to(own[k].dtype))
    info = {"source": source, "loaded": len(loaded), "backbone": len(backbone), "classifier": sorted(head),
            "skipped_shape": shape, "skipped_absent": absent, "unused": unused}
    log(f"dense: {source}: loaded {len(loaded)} of {len(backbone)} backbone tensors; classifier "
        f"{', '.join(sorted(head))} initialised afresh for {_outputs(head_module)} classes"
        + (f"; other shape, left as initialised: {', '.join(shape[:4])}{' ...' if len(shape) > 4 else ''}" if shape else "")
        + (f"; not in the file: {', '.join(absent[:4])}{' ...' if len(absent) > 4 else ''}" if absent else "")
        + (f"; {len(unused)} tensors of the file have no place in the model" if unused else ""))
    return info


def _outputs(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def initial_model(spec: ModelSpec, pretrained: str = "", init_from: str = "", trust_pickle: bool = False
                  ) -> tuple[nn.Module, dict]:
    """The network `spec` describes with --pretrained or --init-from weights loaded (not yet trained), and what was
    loaded. Runs before anything is written: every error here is one line."""
    model = build(spec)
    if pretrained:
        state, source = pretrained_state(spec, pretrained)
        return model, load_matching(model, state, source)
    state, desc = file_state(init_from, trust_pickle)
    info = load_matching(model, state, init_from)
    if desc is not None:  # a prunelab model file says what it was fed
        info["inputs"] = specs(desc)[1]
    return model, info

