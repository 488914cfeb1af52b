"""One loop for training and fine-tuning, and evaluate(). Plain functions with explicit arguments."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import Config, PrunelabError
from .data import Normalizer, Split, eval_batches, train_batches
from . import distributed
from .distributed import sum_all


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
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else None


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


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
    label_smoothing: float
    progress: bool

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> "Trainer":
        return cls(device=device, normalizer=Normalizer(cfg.mean, cfg.std, device, cfg.channels_last),
                   amp_dtype=autocast_dtype(cfg.precision, device), batch_size=cfg.batch_size,
                   eval_batch_size=cfg.eval_batch_size, crop_padding_px=cfg.crop_padding_px, flip=cfg.flip,
                   label_smoothing=cfg.label_smoothing, progress=cfg.progress)


def make_optimizer(model: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    """SGD over the model's live parameters. Rebuild it after every pruning step: Torch-Pruning
    replaces the parameter objects, so an old optimiser would update tensors the model no longer has."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_batches: int,
                    warmup_batches: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over warmup_batches, then cosine from the base lr to 0, stepped once per batch."""
    def factor(i: int) -> float:
        if i < warmup_batches:
            return (i + 1) / warmup_batches
        t = min(i - warmup_batches, total_batches - warmup_batches) / max(total_batches - warmup_batches, 1)
        return 0.5 * (1 + math.cos(math.pi * t))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def train_epoch(model: nn.Module, split: Split, optimizer: torch.optim.Optimizer, scheduler, trainer: Trainer,
                generator: torch.Generator, desc: str = "train", teacher: nn.Module | None = None,
                kd_temperature: float = 4.0, kd_weight: float = 0.5, targets: torch.Tensor | None = None) -> dict:
    """One pass over `split` (already on trainer.device). With a teacher, the loss is distillation_loss
    against the teacher's logits on the same augmented batch; with `targets` (from soft_targets(), one row
    per image of `split`) against those rows instead. Returns loss, accuracy, images/s, seconds."""
    model.train()  # building a pruner or evaluating leaves the model in eval mode
    if teacher is not None:
        teacher.eval()
    scaler = torch.amp.GradScaler("cuda") if trainer.amp_dtype == torch.float16 else None
    n_batches = math.ceil(len(distributed.shard(torch.arange(len(split)))) / trainer.batch_size)  # this rank's
    loss_sum = torch.zeros((), device=trainer.device)
    correct = torch.zeros((), device=trainer.device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(total=n_batches, desc=desc, unit="batch", disable=not trainer.progress, leave=False, dynamic_ncols=True)
    for i, (images, labels, idx) in enumerate(train_batches(split, trainer.batch_size, generator,
                                                             trainer.crop_padding_px, trainer.flip, with_index=True)):
        x = trainer.normalizer(images)
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
            logits = model(x)
            if targets is not None:
                loss = distillation_loss(logits, targets[idx], labels, kd_temperature, kd_weight,
                                         trainer.label_smoothing)
            elif teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = distillation_loss(logits, teacher_logits, labels, kd_temperature, kd_weight,
                                         trainer.label_smoothing)
            else:
                loss = F.cross_entropy(logits, labels, label_smoothing=trainer.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
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
                raise PrunelabError(f"{desc}: the loss became {mean_loss} at batch {i + 1}; lower the learning rate "
                                    "(--lr/--finetune-lr) or use --precision fp32")
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{accuracy:.3f}",
                            img_s=f"{images / (time.perf_counter() - start):.0f}")
    bar.close()
    distributed.sync_buffers(getattr(model, "module", model))  # under DDP: every rank ends with rank 0's BN statistics
    seconds = time.perf_counter() - start
    return {"loss": mean_loss, "train_accuracy": accuracy, "images_per_s": images / seconds, "seconds": seconds}


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, normalizer: Normalizer, batch_size: int = 500,
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
