"""Data-parallel training across processes started by ``torchrun`` or ``accelerate launch``.

Every process holds the whole model and trains on its own batches; after each backward the
adapter gradients are averaged with one all-reduce, so the adapters stay identical. Only the
trainable tensors travel, which for a PEFT adapter is a few megabytes. Gloo serves CPUs, NCCL GPUs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """Where this process stands: its rank, how many there are, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Processes:
    """Join the process group the launcher described in ``WORLD_SIZE``/``RANK``; a lone process needs none."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    chosen = _device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Processes(rank, world_size, local_rank, local_world, chosen)


def _device(device: str, local_rank: int) -> torch.device:
    # `accelerate launch --cpu` says so in ACCELERATE_USE_CPU; honour it even where a GPU exists.
    forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and not forced_cpu else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device)


def set_threads(procs: Processes) -> int:
    """Share the CPU cores among the processes on this machine, unless ``OMP_NUM_THREADS`` says otherwise."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // max(procs.local_world_size, 1))
    torch.set_num_threads(threads)
    return threads


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()


def broadcast_parameters(params: Iterable[torch.Tensor], procs: Processes) -> None:
    """Give every process rank 0's values, so randomly initialised adapters start out identical."""
    if procs.distributed:
        for param in params:
            dist.broadcast(param.data, src=0)


def average_gradients(params: Iterable[torch.Tensor], procs: Processes) -> None:
    """Replace each gradient by its mean over the processes, in one flat all-reduce."""
    if not procs.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= procs.world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def all_sum(values: list[float], procs: Processes) -> list[float]:
    """Element-wise sum of ``values`` over the processes."""
    if not procs.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=procs.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 of tensor names, shapes, dtypes and values: equal digests mean equal adapters."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        sha.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
