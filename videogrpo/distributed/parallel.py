"""How the ranks share the model: DDP (replicas) or FSDP2 `fully_shard` (shards), both PyTorch's.

DDP keeps a whole copy of the model on every rank and averages the trainable gradients once per
optimizer step; it suits LoRA, whose adapter is small. FSDP2 shards the trainable weights, their
gradients and optimizer state, the fixed reference and the moving anchor over the ranks, and
all-gathers one transformer block at a time; it is for full fine-tuning of models that do not
fit on one device. `auto` picks DDP for LoRA and FSDP2 for full fine-tuning.

Collectives must line up across ranks. The update therefore runs the same model calls on every
rank (`training/update.py` pads a rank that has no rows for a step), and the phases without
gradients (rollout, eval, reference means), where ranks call the model a different number of
times, run inside `gathered()`: FSDP2 gathers the whole weights once for the phase.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from videogrpo.distributed.world import World
from videogrpo.errors import UserError
from videogrpo.models.base import Conditioning, VideoGenerator
from videogrpo.models.registry import DTYPES, enable_training

if TYPE_CHECKING:
    from videogrpo.config.settings import ModelConfig

STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class Parallel:
    """This rank's view of the job: the world, and how the model's weights are shared."""

    world: World = field(default_factory=World)
    strategy: str = "none"  # none (one process), ddp or fsdp
    ddp: DistributedDataParallel | None = None
    sharded: list[FSDPModule] = field(default_factory=list)  # FSDP units, blocks first
    reshards: list[bool] = field(default_factory=list)  # each unit's reshard-after-forward

    @property
    def replicas(self) -> int:
        """DDP and FSDP2 average gradients over this many ranks; the loss is scaled up by it."""
        return self.world.size

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Whole weights on every rank for a phase without gradients, whatever its model calls.

        Enter it after the weights for the phase are in place (a reference swapped in): the
        gathered copy is taken on entry.
        """
        if not self.sharded:
            yield
            return
        for unit in self.sharded:
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for unit, reshard in zip(self.sharded, self.reshards, strict=True):
                unit.reshard()
                unit.set_reshard_after_forward(reshard, recurse=False)

    def gradient_sync(self, enabled: bool) -> Any:
        """DDP averages gradients only on the last backward of an optimizer step."""
        if self.ddp is None or enabled:
            return nullcontext()
        return self.ddp.no_sync()


ONE_PROCESS = Parallel()


class _VelocityModule(nn.Module):
    """DDP's view of a generator: its forward is the velocity, so DDP sees every forward."""

    def __init__(self, generator: VideoGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(
        self, latents: Tensor, sigma: Tensor, conditioning: Conditioning, guidance_scale: float
    ) -> Tensor:
        return self.generator.velocity(latents, sigma, conditioning, guidance_scale)


class ReplicatedGenerator:
    """A VideoGenerator whose velocity runs through DDP; everything else is the generator's."""

    def __init__(self, generator: VideoGenerator, ddp: DistributedDataParallel) -> None:
        self.generator = generator
        self.ddp = ddp

    def velocity(
        self, latents: Tensor, sigma: Tensor, conditioning: Conditioning, guidance_scale: float
    ) -> Tensor:
        return self.ddp(latents, sigma, conditioning, guidance_scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)


def resolve_strategy(strategy: str, finetune: str) -> str:
    if strategy not in STRATEGIES:
        raise UserError(f"distributed.strategy: {strategy!r} is not one of {list(STRATEGIES)}")
    if strategy == "auto":
        return "ddp" if finetune == "lora" else "fsdp"
    return strategy


def fsdp_units(model: VideoGenerator) -> list[nn.Module]:
    """The modules FSDP2 shards one by one: the backbone's blocks, then the module holding them."""
    units = getattr(model, "fsdp_units", None)
    if units is None:
        raise UserError(
            f"distributed.strategy fsdp: the {type(model).__name__} backbone does not say how to "
            "shard it (no fsdp_units method); use distributed.strategy=ddp"
        )
    return list(units())


def shard(model: VideoGenerator, world: World, dtype: torch.dtype) -> Parallel:
    """`fully_shard` each unit (the last, the root, keeps its weights after forward for the
    backward that follows, as FSDP2 does for a root); lower-precision compute per `dtype`."""
    policy = (
        MixedPrecisionPolicy()
        if dtype == torch.float32
        else MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    )
    units = fsdp_units(model)
    reshards = [True] * (len(units) - 1) + [False]
    for unit, reshard in zip(units, reshards, strict=True):
        fully_shard(unit, reshard_after_forward=reshard, mp_policy=policy)
    return Parallel(world, "fsdp", sharded=list(units), reshards=reshards)


def replicate(model: VideoGenerator, world: World) -> tuple[VideoGenerator, Parallel]:
    """DDP over the trainable weights (rank 0's are broadcast to every rank once)."""
    on_gpu = model.device.type == "cuda"
    ddp = DistributedDataParallel(
        _VelocityModule(model),
        device_ids=[model.device.index] if on_gpu else None,
        forward_sync_buffers=False,  # buffers are constants; a sync per forward would also
        # need every rank to call the model equally often in rollouts
        # A call may leave trainable weights out (Wan 2.2's expert of the other noise level):
        # DDP then finds them in the graph and reduces what earlier calls accumulated.
        find_unused_parameters=True,
    )
    return ReplicatedGenerator(model, ddp), Parallel(world, "ddp", ddp=ddp)


def parallelize(
    model: VideoGenerator, config: ModelConfig, strategy: str, world: World
) -> tuple[VideoGenerator, Parallel]:
    """Switch on the trainable part and share the model over the ranks, in the order each way
    needs: DDP wraps the finished trainable model; FSDP2 shards an adapter with its frozen base,
    and shards before full fine-tuning copies the reference, so the copy is sharded too."""
    if model.device.type == "cpu" and torch.distributed.get_backend() == "nccl":
        raise UserError("model.device: cpu cannot train over nccl; use distributed.backend=gloo")
    chosen = resolve_strategy(strategy, config.finetune)
    if chosen == "ddp":
        return replicate(enable_training(model, config), world)
    dtype = DTYPES[config.dtype]
    if config.finetune == "lora":
        enable_training(model, config)
        return model, shard(model, world, dtype)
    parallel = shard(model, world, dtype)
    enable_training(model, config)
    return model, parallel
