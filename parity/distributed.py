"""Scale-out: split a plan over processes started by `accelerate launch` or `torchrun`.

Each process takes every world_size-th case, writes its own results shard, and waits at a
barrier; rank 0 then writes the merged tables and reports. Across hosts the run folder must
be shared (or the shards copied together before `parity report`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.rank, self.size) if self.size > 1 else None

    def device(self, requested: str) -> str:
        """With several processes on one host, 'auto' or 'cuda' means this process's own GPU."""
        import torch

        if self.size > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested


def current_world() -> World:
    """The launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK); a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def barrier(world: World, timeout_s: float = 6 * 3600) -> None:
    """Wait for every process (gloo on CPU, NCCL on GPUs); a no-op for one process."""
    if world.size <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    dist.barrier()
