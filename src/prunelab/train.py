"""One loop for every training and fine-tuning stage and every control, `fit(...)`, and `score()`. Plain functions
with explicit arguments: the model, the images, the epochs and learning rate, and a Trainer (what every epoch
needs besides them)."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .config import Config

from .errors import PrunelabError, TrainingDiverged
from .files import exclusive, write_atomic
from .data import (InputSpec, Normalizer, Split, apply_views, augment_batch, augmentation_for, batches_per_epoch,
                   cutout, eval_batches, resolve_normalization, train_batches, view_padding)
from . import distributed
from .distributed import log, sum_all
from .measurement import cpu_has_bf16
from .models import channels_last_unsafe_on_cpu, classifier


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PrunelabError("device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise PrunelabError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    # auto: bf16 where the hardware does it natively (CPUs with AVX-512 bf16 / AMX, Ampere+ GPUs)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and cpu_has_bf16() else None


@dataclass
class Trainer:
    """What every training or fine-tuning epoch needs besides the model and the optimiser."""
    device: torch.device
    normalizer: Normalizer
    amp_dtype: torch.dtype | None
    batch_size: int
    eval_batch_size: int
    crop_padding_px: int
    flip: bool
    augmentation: str  # pad-crop | resized-crop | none
    label_smoothing: float
    progress: bool
    channels_last: bool = True  # train in channels_last where the model allows it (prepare_model)
    momentum: float = 0.9  # SGD
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_per_batch: bool = False  # the cosine schedule steps per batch (else per epoch)
    seed: int = 0  # with the stage and epoch, seeds each epoch's data order and augmentation
    cutout_px: int = 0  # cutout's square side after the augmentation (0 = off)

    @property
    def view_padding(self) -> int:
        """The crop padding of replayed views (--distill-views) under this augmentation: data.view_padding."""
        return view_padding(self.augmentation, self.crop_padding_px)

    def network_input(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What the network sees in training, from a batch of augmented uint8 images: normalised, then cutout (its
        squares drawn from `generator`; nothing is drawn when cutout is off, so runs without it draw as they always
        did). The one place for it: training and the batch-norm re-estimate must agree (RESULTS 7.17)."""
        x = self.normalizer(images)
        return cutout(x, self.cutout_px, generator) if self.cutout_px else x

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device, inputs: InputSpec | None = None) -> "Trainer":
        """The trainer for cfg; `inputs` (the data's InputSpec) gives the normalisation and image size (default:
        cfg's numbers, 32 px)."""
        mean = inputs.mean if inputs else resolve_normalization(cfg.mean, 0, None)
        std = inputs.std if inputs else resolve_normalization(cfg.std, 1, None)
        return cls(device=device, normalizer=Normalizer(mean, std, device, cfg.channels_last),
                   amp_dtype=autocast_dtype(cfg.precision, device), batch_size=cfg.batch_size,
                   eval_batch_size=cfg.eval_batch_size, crop_padding_px=cfg.crop_padding_px, flip=cfg.flip,
                   augmentation=augmentation_for(cfg.augmentation, inputs.image_size if inputs else 32),
                   label_smoothing=cfg.label_smoothing, progress=cfg.progress, channels_last=cfg.channels_last,
                   momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                   lr_per_batch=cfg.lr_schedule_unit == "batch", seed=cfg.seed, cutout_px=cfg.cutout_px)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` (0: left as it is) inside the block, and restored after it."""
    before = torch.get_num_threads()
    try:
        if n:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


def prepare_model(model: nn.Module, trainer: Trainer) -> nn.Module:
    """The model on the trainer's device, in channels_last when the trainer asks for it, except on the CPU for a
    model with a convolution that oneDNN's channels_last backward pass corrupts memory on
    (models.channels_last_unsafe_on_cpu): then in NCHW, its inputs too (the trainer's normalizer follows)."""
    model.to(trainer.device)
    unsafe = trainer.device.type == "cpu" and channels_last_unsafe_on_cpu(model)
    if unsafe and trainer.channels_last and trainer.normalizer.channels_last:
        log(f"  training in NCHW from here: channels_last would corrupt memory in the CPU backward pass of "
            f"{unsafe} (1x1, stride 2, under 16 input channels; oneDNN issue #6035)")
    channels_last = trainer.channels_last and not unsafe
    trainer.normalizer.channels_last = channels_last
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def make_optimizer(model: nn.Module, cfg: "Config | Trainer", lr: float, head_lr: float = 0.0) -> torch.optim.Optimizer:
    """SGD over the model's live parameters (momentum, weight decay, Nesterov from a Config or a Trainer); with
    `head_lr`, the classifier's parameters in a group of their own at that rate (transfer learning). Rebuild it after
    every pruning step: Torch-Pruning replaces the parameter objects, so an old optimiser would update tensors the
    model no longer has."""
    params = model.parameters()
    if head_lr:
        head = {id(p) for p in classifier(model).parameters()}
        params = [{"params": [p for p in model.parameters() if id(p) not in head]},
                  {"params": [p for p in model.parameters() if id(p) in head], "lr": head_lr}]
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int = 0, start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over warmup_steps, then cosine from the base lr to 0 over the rest: step i (0-based)
    runs at base * 0.5 * (1 + cos(pi * i / total)), which is torch's CosineAnnealingLR(T_max=total). A step
    is a batch or an epoch, as the caller steps it (Config.lr_schedule_unit). `start`: the schedule begins at
    that step (a resumed stage), without stepping through the ones before it."""
    def factor(i: int) -> float:
        if i < warmup_steps:
            return (i + 1) / warmup_steps
        t = min(i - warmup_steps, total_steps - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * t))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: factor(i + start))


class Distillation:
    """The soft targets of knowledge distillation, from one of three sources: a frozen teacher run on every
    augmented batch; `targets` computed once per training image (soft_targets(); row i for image i); or, with
    `views` (data.draw_views(), n x k x 3), computed once per fixed view of every image (view_targets(); n x k x
    classes), which training then shows in place of fresh crops (FKD's replay: Shen & Xing, ECCV 2022)."""

    def __init__(self, temperature: float, weight: float, *, teacher: nn.Module | None = None,
                 targets: torch.Tensor | None = None, views: torch.Tensor | None = None):
        if (teacher is None) == (targets is None):
            raise ValueError("Distillation needs a teacher or cached targets, not both")
        if views is not None and (targets is None or targets.shape[:2] != views.shape[:2]):
            raise ValueError("Distillation's views need cached targets, one row per image and view")
        self.temperature, self.weight, self.teacher, self.targets = temperature, weight, teacher, targets
        self.views = views

    def subset(self, idx: torch.Tensor) -> "Distillation":
        """The cached targets (and views) of the images `idx` of the split they were computed for."""
        return Distillation(self.temperature, self.weight, targets=self.targets[idx.to(self.targets.device)],
                            views=None if self.views is None else self.views[idx.to(self.views.device)])

    def loss(self, logits: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
             label_smoothing: float) -> torch.Tensor:
        if self.targets is not None:  # (with views, train_batches' index is image * k + view)
            teacher_logits = (self.targets if self.views is None else self.targets.flatten(0, 1))[idx]
        else:  # the teacher is in eval mode from the start (set_teacher); only the student is put in train mode
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        return distillation_loss(logits, teacher_logits, labels, self.temperature, self.weight, label_smoothing)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - weight) * cross-entropy + weight * T^2 * KL(teacher_T || student_T), the soft-target loss of
    Hinton et al. 2015 (arXiv:1503.02531); T^2 keeps the soft term's gradients on the hard term's scale."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=1),
                    F.log_softmax(teacher_logits.float() / temperature, dim=1), reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * temperature ** 2 * soft


@torch.inference_mode()
def soft_targets(teacher: nn.Module, split: Split, trainer: Trainer) -> torch.Tensor:
    """The teacher's logits for every image of `split`, averaged over the image and its mirror (the flip
    is part of the augmentation), as an N x classes fp32 tensor: distillation targets computed once
    instead of a teacher forward pass on every augmented batch. They ignore the random crop."""
    teacher.eval()
    out = []
    for images, _ in eval_batches(split, trainer.eval_batch_size):
        x = trainer.normalizer(images)
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
            out.append((teacher(x).float() + teacher(x.flip(3)).float()) / 2)
    return torch.cat(out)


@torch.inference_mode()
def view_targets(teacher: nn.Module, split: Split, trainer: Trainer, views: torch.Tensor) -> torch.Tensor:
    """The teacher's logits for every view of every image of `split` (`views`: data.draw_views() for them, drawn
    with trainer.view_padding), as an n x k x classes fp32 tensor: k teacher passes per image, once."""
    teacher.eval()
    out, start = None, 0
    for images, _ in eval_batches(split, trainer.eval_batch_size):
        for v in range(views.shape[1]):
            x = trainer.normalizer(apply_views(images, views[start:start + len(images), v], trainer.view_padding))
            with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
                logits = teacher(x).float()
            if out is None:  # filled in place: no second copy at the end
                out = torch.empty(len(split), views.shape[1], logits.shape[1], device=logits.device)
            out[start:start + len(images), v] = logits
        start += len(images)
    return out


TARGETS_FORMAT = "prunelab teacher targets"


def _hash_parts(h, dtype: torch.dtype, shape: tuple, parts) -> None:
    """Type, shape, then the bytes of each tensor of `parts` in order, into hashlib object `h`: a tensor's bytes
    arrive a piece at a time, so no host copy of a whole data set is made."""
    h.update(f"{dtype}{tuple(shape)}".encode())
    for part in parts:
        h.update(part.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy())


def _hash_tensor(h, t: torch.Tensor, chunk: int = 1 << 26) -> None:
    """`t` into `h`, 64 MB at a time."""
    raw = t.detach().reshape(-1).view(torch.uint8)
    _hash_parts(h, t.dtype, t.shape, (raw[i:i + chunk] for i in range(0, len(raw), chunk)))


def _hash_split(h, split: Split) -> None:
    """What _hash_tensor(h, split.images) adds, without gathering a subset's rows into one copy: 64 MB at a time."""
    rows = max(1, (1 << 26) // max(1, split.source[:1].numel()))
    _hash_parts(h, split.source.dtype, (len(split),) + tuple(split.source.shape[1:]),
                (images for images, _ in eval_batches(split, rows)))


def targets_key(teacher: nn.Module, split, trainer: Trainer, views: torch.Tensor | None) -> str:
    """SHA-256 of everything a teacher's cached outputs depend on: its architecture and every weight and
    buffer, the images in their order (or, streamed, their files), the normalisation, the views (or the
    image-and-mirror mean), and the device type and autocast precision they are computed in."""
    h = hashlib.sha256(f"{TARGETS_FORMAT} 1\n{teacher!r}\n".encode())
    for name, t in teacher.state_dict().items():
        h.update(name.encode())
        _hash_tensor(h, t)
    if isinstance(split, Split):
        _hash_split(h, split)
    else:  # FileSplit: the files, as data.read_image_folder_split keys its cache
        h.update(f"files size={split.size}".encode())
        for f in split.files:
            st = Path(f).stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    _hash_tensor(h, split.labels)
    _hash_tensor(h, trainer.normalizer.mean)
    _hash_tensor(h, trainer.normalizer.std)
    h.update(f"{trainer.device.type} {trainer.amp_dtype}".encode())
    if views is None:
        h.update(b"image and mirror mean")
    else:
        h.update(f"views padding={trainer.view_padding}".encode())
        _hash_tensor(h, views)
    return h.hexdigest()


def teacher_targets(teacher: nn.Module, split, trainer: Trainer, views: torch.Tensor | None = None,
                    cache_dir: Path | None = None) -> tuple[torch.Tensor, dict]:
    """soft_targets() (views None) or view_targets(), read from `cache_dir` when an earlier run computed them
    for the same teacher, images, normalisation, views and precision (targets_key), else computed and written
    there (atomically; a cache that cannot be written or read only costs time). Runs that want the same outputs at
    the same time take turns (files.exclusive): the first computes them, the others wait and read. The cache's
    format is this function's: `teacher-targets-<key>.safetensors`, the targets plus a JSON description in its
    metadata.
    Returns the targets (on the training device) and what happened: {"cache": path or None, "hit": bool,
    "seconds": the teacher passes' time, measured by the run that made them}."""
    if cache_dir is None:
        return _targets_made(teacher, split, trainer, views, None, None)
    key = targets_key(teacher, split, trainer, views)
    path = Path(cache_dir) / f"teacher-targets-{key[:24]}.safetensors"
    # runs started together (a sweep plan's jobs) wait for the one computing the same outputs, then read them;
    # torchrun's other ranks compute their own (only the main rank writes)
    with exclusive(path.parent / f".{path.stem}.lock" if distributed.WORLD.main else None,
                   lambda: log(f"  waiting for another run computing the teacher's outputs into {path}")):
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    desc = json.loads((f.metadata() or {}).get("prunelab", "{}"))
                    targets = f.get_tensor("targets")
                shape = (len(split),) if views is None else tuple(views.shape[:2])
                if desc.get("format") != TARGETS_FORMAT or desc.get("key") != key or targets.shape[:len(shape)] != shape:
                    raise ValueError("it describes other targets")
                return targets.to(trainer.device), {"cache": str(path), "hit": True,
                                                    "seconds": float(desc.get("seconds", 0.0))}
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
                log(f"prunelab: teacher-output cache {path} is unreadable ({e}); computing the outputs again")
        return _targets_made(teacher, split, trainer, views, path, key)


def _targets_made(teacher: nn.Module, split, trainer: Trainer, views: torch.Tensor | None, path: Path | None,
                  key: str | None) -> tuple[torch.Tensor, dict]:
    """teacher_targets' outputs computed, and written to `path` (if given) with their description."""
    start = time.perf_counter()
    targets = soft_targets(teacher, split, trainer) if views is None else view_targets(teacher, split, trainer, views)
    seconds = time.perf_counter() - start
    size = targets.numel() * targets.element_size()
    if path is not None and shutil.disk_usage(next(p for p in (path.parent, *path.parent.parents) if p.exists())
                                              ).free < 2 * size + 2 ** 30:
        log(f"prunelab: not caching the teacher's outputs ({size / 1e9:.1f} GB): too little free disk under {path.parent}")
        path = None
    if path is not None and distributed.WORLD.main:
        desc = {"format": TARGETS_FORMAT, "version": 1, "key": key, "images": len(split),
                "views": "image and mirror mean" if views is None else int(views.shape[1]),
                "classes": int(targets.shape[-1]), "teacher": type(teacher).__name__, "device": trainer.device.type,
                "precision": str(trainer.amp_dtype or torch.float32).removeprefix("torch."), "seconds": seconds,
                "torch": torch.__version__}
        try:
            write_atomic(path, lambda p: save_file({"targets": targets.detach().cpu().contiguous()}, str(p),
                                                   metadata={"prunelab": json.dumps(desc)}))
            log(f"  cached the teacher's outputs in {path} ({size / 1e6:.0f} MB): later runs with the same teacher, "
                "images and views read them (delete the file to free the space)")
        except OSError as e:
            log(f"prunelab: cannot write the teacher-output cache {path} ({e}); later runs will compute it again")
            path = None
    return targets, {"cache": None if path is None else str(path), "hit": False, "seconds": seconds}


def train_epoch(model: nn.Module, split: Split, optimizer: torch.optim.Optimizer, scheduler, trainer: Trainer,
                generator: torch.Generator, desc: str = "train", distill: Distillation | None = None,
                regularize=None) -> dict:
    """One pass over `split` (already on trainer.device); `scheduler` (if any) steps after every batch.
    The loss is cross-entropy, or with `distill` the distillation loss. `regularize()`, if given, changes
    the gradients after every backward pass (sparse training). Returns loss, accuracy, the lr of the last
    batch, images/s and seconds."""
    model.train()  # building a pruner or evaluating leaves the model in eval mode
    scaler = torch.amp.GradScaler("cuda") if trainer.amp_dtype == torch.float16 else None
    n_batches = batches_per_epoch(len(split), trainer.batch_size)
    loss_sum = torch.zeros((), device=trainer.device)
    correct = torch.zeros((), device=trainer.device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(total=n_batches, desc=desc, unit="batch", disable=not trainer.progress, leave=False, dynamic_ncols=True)
    for i, (images, labels, idx) in enumerate(train_batches(split, trainer.batch_size, generator,
                                                             trainer.crop_padding_px, trainer.flip, with_index=True,
                                                             kind=trainer.augmentation,
                                                             views=distill.views if distill is not None else None)):
        x = trainer.network_input(images, generator)
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
            logits = model(x)
            loss = (distill.loss(logits, x, labels, idx, trainer.label_smoothing) if distill is not None
                    else F.cross_entropy(logits, labels, label_smoothing=trainer.label_smoothing))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if regularize is not None:
                scaler.unscale_(optimizer)
                regularize()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if regularize is not None:
                regularize()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        bar.update(1)
        if i % 20 == 0 or i == n_batches - 1:  # reading the loss syncs a GPU (and all ranks): only now and then
            totals = sum_all(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                          torch.tensor(float(seen), device=trainer.device)]))
            mean_loss, accuracy, images = totals[0].item() / totals[2].item(), totals[1].item() / totals[2].item(), totals[2].item()
            if not math.isfinite(mean_loss):
                bar.close()
                raise TrainingDiverged(f"{desc}: the loss became {mean_loss} at batch {i + 1}")
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{accuracy:.3f}",
                            img_s=f"{images / (time.perf_counter() - start):.0f}")
    bar.close()
    distributed.sync_buffers(getattr(model, "module", model))  # under DDP: every rank ends with rank 0's BN statistics
    seconds = time.perf_counter() - start
    return {"loss": mean_loss, "train_accuracy": accuracy, "lr": lr, "images_per_s": images / seconds,
            "seconds": seconds}


def probe_rates(model: nn.Module, split: Split, val: Split, rates: list[float], images: int, *, trainer: Trainer,
                seed: int, distill: Distillation | None = None, bn_images: int = 0) -> list[float]:
    """The validation accuracy that each of `rates` reaches in a short fine-tune of its own: a copy of `model` trained
    for one pass over `images` images of `split` (drawn with `seed`, the same for every rate) with the cosine schedule
    stepped per batch from the rate to 0, so that each copy ends annealed as the whole fine-tune does; its batch-norm
    statistics then re-estimated on `bn_images` of them, and scored on `val`, never the test set. A rate whose loss
    diverges scores 0. `distill`: as fit's (cached targets are taken for the drawn images). `model` is not changed.
    A short fine-tune favours low rates over the whole fine-tune's best (short-horizon bias), less so the more images
    it has: RESULTS 7.37 measures how far."""
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:images]
    sub = split.subset(idx.to(split.labels.device))
    if distill is not None and distill.targets is not None:
        distill = distill.subset(idx)
    probe_trainer = replace(trainer, lr_per_batch=True, seed=seed)
    accuracies = []
    for rate in rates:
        copied = copy.deepcopy(model)
        try:
            fit(copied, sub, 1, rate, trainer=probe_trainer, stage=0, phase=f"lr probe {rate:g}", distill=distill,
                bn_images=bn_images)
            accuracies.append(score(copied, val, trainer.normalizer, trainer.eval_batch_size)["accuracy"])
        except TrainingDiverged:
            log(f"  lr probe {rate:g}: the loss diverged; this rate scores 0")
            accuracies.append(0.0)
        del copied
    return accuracies


@torch.inference_mode()
def score(model: nn.Module, split: Split, normalizer: Normalizer, batch_size: int = 500,
          amp_dtype: torch.dtype | None = None) -> dict:
    """Top-1 accuracy and mean loss over `split` (fp32 unless amp_dtype is given). Leaves the model in eval mode."""
    model.eval()
    device = normalizer.mean.device
    world = distributed.WORLD
    if world.active:  # each rank evaluates every size-th image; the sums are added up
        split = split.subset(torch.arange(world.rank, len(split), world.size, device=split.labels.device))
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, images
    for images, labels in eval_batches(split, batch_size):
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(normalizer(images))
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        totals[1] += (logits.argmax(1) == labels).sum()
        totals[2] += len(labels)
    loss_sum, correct, n = sum_all(totals).tolist()
    return {"accuracy": correct / n, "loss": loss_sum / n}


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def fresh_statistics(model: nn.Module):
    """Inside: the running statistics of every batch norm of `model` start afresh and average the batches that pass
    in train mode equally (momentum None); each layer's own momentum is restored on the way out."""
    norms = batch_norms(model)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, split: Split, trainer: Trainer, images: int, seed: int) -> int:
    """Reset the running statistics of every batch-norm layer and estimate them anew from `images` training images
    of `split` (drawn with `seed`; all of them if fewer), augmented as training augments them (the trainer's crop,
    flip and cutout, drawn with `seed` too), by forward passes in train mode without gradients, as a plain average
    over the batches (momentum None). Weights are not changed. After a pruning step the old statistics describe
    channels' inputs that no longer exist; EagleEye (Li et al., ECCV 2020) re-estimates them before scoring a pruned
    candidate. Augmented, because the layers after each batch norm were trained on the statistics of augmented
    batches: statistics of the clean images cost a 4x model 1.1 points after 2 epochs (83.33% against 84.46%,
    RESULTS 7.17). Returns the images used (0 when the model has no batch norm)."""
    if not batch_norms(model) or images <= 0:
        return 0
    n = min(images, len(split))
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    part = split.subset(idx.to(split.labels.device))
    was_training = model.training
    model.train()
    generator = torch.Generator().manual_seed(seed)
    try:
        with fresh_statistics(model):
            for images_u8, _ in eval_batches(part, trainer.batch_size):
                x = trainer.network_input(augment_batch(images_u8, trainer.augmentation, trainer.crop_padding_px,
                                                        trainer.flip, generator), generator)
                with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype,
                                    enabled=trainer.amp_dtype is not None):
                    model(x)
    finally:
        model.train(was_training)
    distributed.sync_buffers(model)  # under DDP: every rank ends with rank 0's statistics
    return n


def stage_bn_images(model: nn.Module, configured: int) -> int:
    """How many images the batch-norm statistics are re-estimated on at the end of a training stage: `configured`
    (--bn-reestimate-images), or, where that is 0, STAGE_BN_IMAGES for a model with a batch norm whose momentum is
    below PyTorch's default 0.1 (None counts as low: a cumulative average). Such running averages span the last
    hundred or more batches (torchvision's MobileNetV3 and EfficientNet keep 0.01) and lag far behind a short
    stage: a MobileNetV3 trained for 2 epochs scored at chance on its running statistics and 79% on re-estimated
    ones (RESULTS 8). With the default momentum they follow the cosine schedule's quiet end, and nothing changes."""
    if configured:
        return configured
    lagging = any(m.momentum is None or m.momentum < 0.1 for m in batch_norms(model))
    return STAGE_BN_IMAGES if lagging else 0


STAGE_BN_IMAGES = 2560


def fit(model: nn.Module, split: Split, epochs: int, lr: float, *, trainer: Trainer, stage: int, phase: str,
        warmup_epochs: float = 0.0, val: Split | None = None, distill: Distillation | None = None,
        sparsifier=None, run_dir=None, replan=None, head_lr: float = 0.0, bn_images: int = 0) -> None:
    """`epochs` epochs of SGD over `split` (on trainer.device) with a fresh optimiser and a cosine schedule over them
    (after `warmup_epochs` of linear warm-up), stepped per epoch or per batch (trainer.lr_per_batch). Each epoch's
    data order and augmentation come from a generator seeded by (trainer.seed, stage, epoch), so a resumed stage
    makes the same draws.
    - `run_dir` (a rundir.RunDir, or None for no files): each epoch's row goes to its metrics.jsonl, and after
      every epoch but the last the weights and momentum go to its partial checkpoint, so a crash costs at most
      one epoch; a stage that finds its partial checkpoint continues after it, and epoch rows of this stage past
      it (a crash between a row and its checkpoint) are dropped first.
    - `head_lr`: the classifier trains at this rate (0: at lr), the rest at lr (transfer fine-tuning).
    - `val`: its accuracy is recorded after every epoch. `distill`: the loss is distillation's.
    - `sparsifier` (a GroupNormPruner): its regulariser acts on every batch.
    - `bn_images`: after the last epoch (before its validation score), the batch-norm statistics are re-estimated
      on this many images of `split` (reestimate_batchnorm): the running averages lag behind weights that moved
      in the stage, far behind with a low momentum (stage_bn_images).
    - `replan(seconds)`: asked after the first epoch of a fresh stage how many epochs the stage should have,
      given that epoch's seconds (the scratch control's time budget); the schedule then runs over the new count."""
    if epochs == 0:
        return
    optimizer = make_optimizer(model, trainer, lr, head_lr)
    steps_per_epoch = batches_per_epoch(len(split), trainer.batch_size) if trainer.lr_per_batch else 1
    done = run_dir.load_partial(model, optimizer, stage) if run_dir is not None else 0  # every rank reads it
    if run_dir is not None and distributed.WORLD.main:
        run_dir.drop_epochs_after(stage, done)
    if done:
        log(f"  continuing after epoch {done} of this stage")
    scheduler = cosine_schedule(optimizer, epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch),
                                start=done * steps_per_epoch)  # continues where it stopped
    net = model
    if distributed.WORLD.active:  # wrapped anew for every stage: pruning changed the parameters
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[trainer.device] if trainer.device.type == "cuda" else None)
    epoch = done
    while epoch < epochs:
        epoch += 1
        gen = torch.Generator().manual_seed(trainer.seed * 1_000_003 + stage * 1000 + epoch)
        if sparsifier is not None:
            sparsifier.update_regularizer()
        stats = train_epoch(net, split, optimizer, scheduler if trainer.lr_per_batch else None, trainer, gen,
                            desc=f"{phase} {epoch}/{epochs}", distill=distill,
                            regularize=(lambda: sparsifier.regularize(model)) if sparsifier is not None else None)
        if not trainer.lr_per_batch:
            scheduler.step()
        new_epochs = replan(stats["seconds"]) if replan is not None and epoch == 1 and done == 0 else epochs
        if new_epochs != epochs:  # the same cosine over the new length, fast-forwarded past epoch 1
            epochs = new_epochs
            scheduler = cosine_schedule(optimizer, epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch),
                                        start=steps_per_epoch)
        row = {"event": "epoch", "stage": stage, "phase": phase, "epoch": epoch, "images": len(split), **stats}
        if epoch == epochs and bn_images:
            row["bn_reestimated"] = reestimate_batchnorm(model, split, trainer, bn_images,
                                                         seed=trainer.seed * 1_000_003 + stage * 1000 + 999)
        if val is not None:
            row["val_accuracy"] = score(model, val, trainer.normalizer, trainer.eval_batch_size)["accuracy"]
        if run_dir is not None and distributed.WORLD.main:
            run_dir.append_metrics(row)
            if epoch < epochs:  # after the metrics line: a crash in between re-runs (and re-logs) this epoch
                run_dir.save_partial(model, optimizer, stage, epoch)
        log(f"  {phase} epoch {epoch}/{epochs}: loss {stats['loss']:.3f} train acc {stats['train_accuracy']:.3f}"
            + (f" val acc {row['val_accuracy']:.3f}" if "val_accuracy" in row else "")
            + (f" (batch-norm statistics re-estimated on {row['bn_reestimated']:,} images)"
               if row.get("bn_reestimated") else "")
            + f"  lr {stats['lr']:.4g}  ({stats['images_per_s']:.0f} img/s, {stats['seconds']:.0f} s)")
