"""What a run on disk does differently under torchrun: who writes, and sharded checkpoints.

Rank 0 alone writes the run directory's files and holds its lock. A checkpoint of several ranks
is rank 0's JSON of the state plus every rank's tensors through torch.distributed.checkpoint
(`distributed/checkpoint.py`) in the same folder; its manifest is written, and the folder swapped
into place, after all ranks have written. Reading accepts either kind on any number of ranks.
One process writes and reads checkpoints as it always has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.distributed.tensor import DTensor

from videogrpo.config import TrainConfig
from videogrpo.distributed.checkpoint import (
    SHARDED_DIR,
    load_rank_rng,
    load_sharded,
    rank_rng_tensors,
    save_sharded,
    shard_like,
    split_tensors,
    with_optimizer_state,
)
from videogrpo.distributed.parallel import Parallel
from videogrpo.models.base import VideoGenerator
from videogrpo.models.registry import build_model, enable_training
from videogrpo.runs.checkpoint import rng_state, save_checkpoint, temporary_folder
from videogrpo.training.trainer import GRPOTrainer


def save_job_checkpoint(
    directory: Path, state: dict[str, Any], step: int, parallel: Parallel
) -> None:
    """`save_checkpoint` for a job of several ranks; every rank calls it with its own `state`
    (the trainer's state under "trainer", this rank's RNG under "rng")."""
    world = parallel.world
    rest = {**state, "rng": None}  # each rank's RNG goes into the shards, under its rank
    skeleton, tensors = split_tensors(rest)
    tensors.update(rank_rng_tensors(world.rank, state["rng"]))

    def write_tensors(folder: Path) -> None:
        world.barrier()  # rank 0 has made the folder and written its JSON
        save_sharded(folder / SHARDED_DIR, tensors)

    if world.is_main:
        save_checkpoint(directory, skeleton, step, write_more=write_tensors)
    else:
        write_tensors(temporary_folder(directory))
    world.barrier()  # in place before any rank reads or writes it again


def fill_state(
    state: dict[str, Any], folder: Path, trainer: GRPOTrainer, parallel: Parallel
) -> dict[str, Any]:
    """A checkpoint's state (as `load_checkpoint` read it from `folder`) completed for this
    rank: tensors whole, or cut into the shards the live FSDP2 model holds; "rng" this rank's."""
    template = None
    if parallel.strategy == "fsdp":
        with_optimizer_state(trainer)
        template = {"trainer": trainer.state_dict()}
    if (folder / SHARDED_DIR).is_dir():
        state = load_sharded(folder / SHARDED_DIR, state, template)
        state["rng"] = load_rank_rng(folder / SHARDED_DIR, parallel.world.rank, rng_state())
    elif template is not None:
        state = shard_like(state, template)
    return state


def trained_weights(state: dict[str, Any], folder: Path) -> dict[str, Tensor]:
    """The trainable weights of a checkpoint of any number of ranks, whole (eval, sample)."""
    if (folder / SHARDED_DIR).is_dir():
        state = load_sharded(folder / SHARDED_DIR, {"trainer": state["trainer"]})
    return state["trainer"]["weights"]


def export_model(
    model: VideoGenerator, config: TrainConfig, parallel: Parallel, write: Callable
) -> None:
    """Hand the trained model to `write(model)` on rank 0, whole.

    DDP's replica is whole already. FSDP2's shards are gathered weight by weight (every rank
    takes part) into a fresh CPU copy of the backbone on rank 0, which then writes what one
    process would (the diffusers LoRA, or the whole model folder).
    """
    world = parallel.world
    if parallel.strategy != "fsdp":
        if world.is_main:
            write(model)
        return
    weights = {
        name: (shard.full_tensor() if isinstance(shard, DTensor) else shard).cpu()
        for name, shard in model.trainable_state_dict().items()
    }
    if world.is_main:
        whole = build_model(replace(config.model, device="cpu"), config.sampling)
        whole = enable_training(whole, config.model)
        whole.load_trainable_state_dict(weights)
        write(whole)
    world.barrier()
