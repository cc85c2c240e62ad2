"""This process's place in a torchrun job, and the few collectives the trainer needs.

Without torchrun (no `WORLD_SIZE` > 1 in the environment) nothing here creates a process group:
`World()` is the one-process world, and each collective returns its input unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from videogrpo.errors import UserError

BACKENDS = ("auto", "gloo", "nccl")
MAX_DIMS = 8  # most dimensions a tensor passed to `World.gather_optional` may have


def launched_ranks() -> int:
    """How many processes torchrun started for this job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as torchrun set it, readable before any process group exists."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class World:
    """Rank and size of this job; `device` is where collectives run (CUDA for NCCL)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory, logs and reports."""
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This rank's contiguous part of `count` items (the first count % size ranks get one
        more), so gathering the parts in rank order restores the items' order."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def gather_rows(self, rows: Tensor) -> Tensor:
        """Every rank's rows joined in rank order; ranks may hold different numbers of rows."""
        return self.gather_rows_at(rows)[0]

    def gather_rows_at(self, rows: Tensor) -> tuple[Tensor, int]:
        """`gather_rows`, and where this rank's rows start in the result."""
        if self.size == 1:
            return rows, 0
        local = rows.to(self.device)
        counts = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        dist.all_gather(counts, torch.tensor([len(rows)], device=self.device))
        sizes = [int(count) for count in counts]
        padded = local.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: len(rows)] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        joined = torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
        return joined.to(rows.device), sum(sizes[: self.rank])

    def gather_optional(self, rows: Tensor | None) -> Tensor:
        """`gather_rows` where some ranks may have nothing (None): they add no rows. Rows are
        float32, e.g. videos kept for saving."""
        shape = torch.zeros(MAX_DIMS + 1, dtype=torch.int64)
        if rows is not None:
            shape[0] = rows.ndim
            shape[1 : rows.ndim + 1] = torch.tensor(rows.shape)
        shapes = self.gather_rows(shape[None])
        ndim, *dims = shapes[int(shapes[:, 0].argmax())].tolist()
        if rows is None:
            rows = torch.zeros(0, *dims[1:ndim], dtype=torch.float32)
        return self.gather_rows(rows.float())

    def sum(self, values: Tensor) -> Tensor:
        """Elementwise sum over ranks (float64, so the order of the terms barely matters)."""
        if self.size == 1:
            return values
        total = values.to(self.device, torch.float64)
        dist.all_reduce(total)
        return total.to(values.device, values.dtype)

    def sum_float(self, value: float) -> float:
        """One number summed over ranks; alone, the number itself."""
        if self.size == 1:
            return value
        return float(self.sum(torch.tensor([value], dtype=torch.float64)))

    def max(self, values: Tensor) -> Tensor:
        """Elementwise maximum over ranks."""
        if self.size == 1:
            return values
        largest = values.to(self.device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return largest.to(values.device)

    def reduce_metrics(self, values: dict[str, float], maxima: set[str]) -> dict[str, float]:
        """Sums over ranks (maxima for the keys in `maxima`); a key some rank lacks counts as 0
        there. Keys come back in rank 0's order, then any only other ranks have."""
        if self.size == 1:
            return values
        names = list(dict.fromkeys(self.gather_text("\n".join(values)).split("\n")))
        names = [name for name in names if name]
        totals = torch.tensor(
            [values.get(name, 0.0) for name in names if name not in maxima], dtype=torch.float64
        )
        largest = torch.tensor(
            [values.get(name, float("-inf")) for name in names if name in maxima],
            dtype=torch.float64,
        )
        totals, largest = iter(self.sum(totals).tolist()), iter(self.max(largest).tolist())
        return {name: next(largest) if name in maxima else next(totals) for name in names}

    def gather_text(self, text: str) -> str:
        """Every rank's `text` joined by newlines, in rank order."""
        data = torch.tensor(list(("\n" + text).encode()), dtype=torch.uint8)
        return bytes(self.gather_rows(data).tolist()).decode()

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on some rank, on every rank (e.g. a stop signal one got)."""
        if self.size == 1:
            return flag
        return bool(self.max(torch.tensor([float(flag)]))[0] > 0)

    def broadcast_text(self, text: str) -> str:
        """Rank 0's `text` on every rank (e.g. a run name built from rank 0's clock)."""
        if self.size == 1:
            return text
        data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=self.device)
        length = torch.tensor([data.numel()], device=self.device)
        dist.broadcast(length, src=0)
        buffer = torch.zeros(int(length), dtype=torch.uint8, device=self.device)
        if self.rank == 0:
            buffer.copy_(data)
        dist.broadcast(buffer, src=0)
        return bytes(buffer.cpu().tolist()).decode()

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init_world(backend: str = "auto") -> World:
    """Join torchrun's process group (gloo on CPUs, NCCL on GPUs), or the one-process world.

    Each rank of a GPU job takes the GPU of its LOCAL_RANK; a backend the machine cannot run is
    a one-line error before anything is loaded.
    """
    size = launched_ranks()
    if size <= 1:
        return World()
    if backend not in BACKENDS:
        raise UserError(f"distributed.backend: {backend!r} is not one of {list(BACKENDS)}")
    has_cuda = torch.cuda.is_available()
    chosen = ("nccl" if has_cuda else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and not has_cuda:
        raise UserError(
            "distributed.backend: nccl needs CUDA GPUs and this machine has none; use gloo or auto"
        )
    if not dist.is_backend_available(chosen):
        raise UserError(f"distributed.backend: this torch build has no {chosen}; use auto")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if chosen == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"torchrun started local rank {local_rank} but this node has "
                f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node "
                f"{torch.cuda.device_count()} or fewer"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(chosen, device_id=device if chosen == "nccl" else None)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, device)


def close_world(world: World) -> None:
    """Leave the process group (a no-op for the one-process world)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
