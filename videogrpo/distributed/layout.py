"""How the global batch is laid out over ranks: each rank takes its share of every minibatch.

Every rank draws the same prompts, seeds and step selection for the whole batch (the generators
are seeded alike), then rolls out only its own samples. Rank r holds part r of each minibatch, so
every optimizer step sees samples from every rank and all ranks take the same optimizer steps. A
group may span ranks: rewards are gathered before the group statistics, so a group's layout
never matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from videogrpo.distributed.world import World
from videogrpo.errors import UserError


def check_batch_layout(prompts: int, group_size: int, minibatches: int, ranks: int) -> None:
    """The global batch must split into minibatches that split evenly over the ranks."""
    batch = prompts * group_size
    if (batch // minibatches) % ranks:
        raise UserError(
            f"the batch of {batch} samples (data.prompts_per_iteration × data.group_size) in "
            f"{minibatches} minibatch(es) (optim.minibatches) gives {batch // minibatches} "
            f"samples per optimizer step, which do not split over {ranks} ranks; make that a "
            f"multiple of {ranks}"
        )


@dataclass(frozen=True)
class MinibatchWork:
    """What every rank must do for one minibatch, known on every rank from the global batch."""

    steps: list[int]  # steps trained by some sample of the minibatch, on any rank
    rows: list[int]  # per step: the most rows one rank trains it with (its model calls follow)
    pairs: int  # (sample, step) pairs trained in the whole minibatch: the loss's denominator

    @classmethod
    def of(cls, *parts: Tensor) -> MinibatchWork:
        """From each rank's (rows, T) trained mask of the minibatch."""
        trained = torch.cat(parts)
        steps = torch.nonzero(trained.any(dim=0)).flatten().tolist()
        rows = [max(int(part[:, k].sum()) for part in parts) for k in steps]
        return cls(steps, rows, int(trained.sum()))


@dataclass(frozen=True)
class BatchLayout:
    """Every rank's samples of a global batch of N, and this rank's part of each minibatch."""

    rank_samples: list[Tensor]  # per rank: global indices of its samples, ascending
    rank: int
    chunks: list[Tensor]  # this rank's minibatches, as positions in its samples
    global_chunks: list[Tensor]  # the minibatches of the whole batch, as global indices

    @classmethod
    def split(cls, global_chunks: list[Tensor], world: World) -> BatchLayout:
        parts = [chunk.tensor_split(world.size) for chunk in global_chunks]
        rank_samples = [torch.cat([part[r] for part in parts]) for r in range(world.size)]
        sizes = [len(part[world.rank]) for part in parts]
        offsets = torch.tensor([0, *sizes]).cumsum(0).tolist()
        chunks = [torch.arange(offsets[i], offsets[i + 1]) for i in range(len(sizes))]
        return cls(rank_samples, world.rank, chunks, global_chunks)

    @property
    def size(self) -> int:
        return len(self.rank_samples)

    @property
    def samples(self) -> Tensor:
        """(N / W,) global indices of this rank's samples."""
        return self.rank_samples[self.rank]

    def local(self, values: Tensor) -> Tensor:
        """This rank's rows of a tensor over the whole batch."""
        return values[self.samples]

    def to_global(self, gathered: Tensor) -> Tensor:
        """Rows gathered in rank order (`World.gather_rows`) put back in global sample order."""
        result = torch.empty_like(gathered)
        result[torch.cat(self.rank_samples)] = gathered
        return result

    def kept(self, count: int) -> int:
        """How many of the batch's first `count` samples are this rank's (a prefix of its own)."""
        return int((self.samples < count).sum())

    def first_in_order(self, gathered: Tensor, count: int) -> Tensor:
        """Rows of the batch's first `count` samples, gathered in rank order, in sample order."""
        order = torch.cat([samples[samples < count] for samples in self.rank_samples])
        return gathered[order.argsort()]

    def work(self, trained: Tensor) -> list[MinibatchWork]:
        """Per minibatch, from the global (N, T) trained mask: the steps any rank trains, the
        most rows a rank trains each with, and the number of trained pairs."""
        parts = [chunk.tensor_split(self.size) for chunk in self.global_chunks]
        return [MinibatchWork.of(*(trained[p] for p in part)) for part in parts]
