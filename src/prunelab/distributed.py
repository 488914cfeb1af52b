"""Multi-process runs on PyTorch's own engine: torchrun starts the processes, torch.distributed connects
them (gloo on CPU, nccl on GPUs) and DistributedDataParallel synchronises gradients.

    torchrun --nproc_per_node 2 -m prunelab run --preset quick --data-dir DATA

A single-process run has world size 1 and every helper here does nothing, so the pipeline has one
code path. Rank 0 alone writes files and prints; all ranks read checkpoints (shared filesystem).
"""
from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .errors import PrunelabError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


WORLD = World()  # replaced by init() in a torchrun process


def log(msg: str) -> None:
    """A line for the user, between progress bars; under torchrun only rank 0 prints."""
    if WORLD.main:
        tqdm.write(msg)


def init(device_name: str) -> tuple[World, torch.device | None]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1). Returns the world and the device
    this rank must use (None: decide as for a single process)."""
    global WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        WORLD = World()
        return WORLD, None
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    WORLD = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return WORLD, torch.device("cuda", local_rank)
    return WORLD, torch.device("cpu")


def shutdown(wait: bool = True) -> None:
    """Leave the process group. Callers must drop their DistributedDataParallel wrappers first: a wrapper
    that outlives the group is destroyed at interpreter exit, in any order, and gloo's worker threads then
    abort the process ("terminate called without an active exception")."""
    global WORLD
    if dist.is_initialized():
        gc.collect()  # free wrappers that are only kept alive by reference cycles
        if wait:  # no rank tears down its connections while another still uses them (skipped after an
            dist.barrier()  # error: the other ranks may be gone, and a barrier would then hang)
        dist.destroy_process_group()
    WORLD = World()


def shard(perm: torch.Tensor, world: World = None) -> torch.Tensor:
    """This rank's share of a permutation, as torch.utils.data.DistributedSampler does it: pad to a multiple
    of the world size with the first indices again, then take every size-th one from the rank on. Every
    rank gets the same number of batches, which DDP needs."""
    world = world or WORLD
    if world.size == 1:
        return perm
    total = -(-len(perm) // world.size) * world.size
    padded = torch.cat([perm, perm[: total - len(perm)]]) if total > len(perm) else perm
    return padded[world.rank:total:world.size]


def shard_length(n: int, world: World = None) -> int:
    """len(shard(a permutation of n)): the number of items each rank gets."""
    world = world or WORLD
    return n if world.size == 1 else -(-n // world.size)


def sum_all(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place, returned)."""
    if WORLD.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def average_gradients(model: torch.nn.Module) -> None:
    """Mean of every gradient over the ranks (for statistics computed outside DDP, e.g. Taylor importance)."""
    if not WORLD.active:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= WORLD.size


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them before each
    forward pass, but the last forward of an epoch leaves each rank with statistics of its own shard."""
    if WORLD.active:
        for b in model.buffers():
            dist.broadcast(b, src=0)


def broadcast_model(model: torch.nn.Module) -> None:
    """Give every rank rank 0's weights and buffers (after work each rank did alone, such as a reconstruction, whose
    floating-point results may differ between devices)."""
    if WORLD.active:
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def barrier() -> None:
    if WORLD.active:
        dist.barrier()


def check_identical(model: torch.nn.Module, what: str) -> None:
    """Fail loudly unless every rank holds the same structure and weights."""
    if not WORLD.active:
        return
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    digests = [None] * WORLD.size
    dist.all_gather_object(digests, h.hexdigest())
    if len(set(digests)) != 1:
        raise PrunelabError(f"ranks disagree on the model {what}; every rank must see the same data and settings")
