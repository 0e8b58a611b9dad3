"""Optional data parallelism: ``dermsort train`` under ``torchrun`` (PyTorch DDP) without code changes.

Outside torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op: one process, the
caller's device. Under torchrun each process trains on its share of every epoch's draw
(``objective.ShardedWeightedSampler``), gradients are averaged by DDP, and rank 0 alone scores
validation, writes checkpoints and reports; decisions that end the loop are broadcast so every rank
stops at the same epoch. Backend: NCCL on CUDA, gloo on CPU (what the tests use, with 2 processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in training steps (DDP-wrapped when there are several processes)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def agree(self, flag: bool) -> bool:
        """Rank 0's value of ``flag`` on every rank (rank 0 alone sees validation and the clock it decides by)."""
        if self.world == 1:
            return bool(flag)
        import torch.distributed as td

        value = torch.tensor([1 if flag else 0], device=self.device if self.device and self.device.type == "cuda" else "cpu")
        td.broadcast(value, src=0)
        return bool(value.item())

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            if td.is_initialized():
                td.barrier()
                td.destroy_process_group()


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment; a single-process Dist otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank,
                device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))
