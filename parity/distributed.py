"""Scale-out: split a plan over processes started by `accelerate launch` or `torchrun`.

Each process takes every world_size-th case, writes its own results shard, and waits for the
others, also after an error; rank 0 then writes the merged tables and reports, or names the
process that failed. Across hosts the run folder must be shared (or the shards copied together
before `parity report`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
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


def settle(world: World, error: BaseException | None, merge: Callable[[], object],
           timeout_s: float = 6 * 3600) -> list[str]:
    """End of a multi-process run: wait for every process, a failed one too (else the others would
    wait for it until the timeout), run ``merge`` on rank 0 while the others still wait (a launcher
    stops every process once one exits with an error), and return "process N of M failed: ..." for
    each failed process.

    gloo always: only a few bytes move, and NCCL would need each process's GPU set first.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    outcomes: list[str | None] = [None] * world.size
    dist.all_gather_object(outcomes, None if error is None else str(error))
    try:
        if world.is_main:
            merge()
    finally:
        dist.barrier()
        dist.destroy_process_group()
    return [f"process {rank + 1} of {world.size} failed: {text}" for rank, text in enumerate(outcomes) if text]
