"""Checkpoints of a torchrun job through torch.distributed.checkpoint (DCP), readable by any
number of ranks.

In a job of several ranks every tensor of the checkpoint state goes through DCP under its path in
the state (`trainer/weights/<name>`, `trainer/optimizer/state/3/exp_avg`, …): each rank writes
the shards it holds (an FSDP2 weight's rows, its optimizer moments, the anchor's), replicated
tensors are written once, and each rank's RNG state goes under `rng/<rank>/`. Rank 0 writes the
rest of the state as JSON, with a placeholder naming each tensor's path. The storage is DCP's
Hugging Face writer: one safetensors file per rank, each shard's offsets in the file's JSON
header. Nothing is pickled (DCP's default writer pickles its `.metadata` file).

Loading reads every tensor whole, or into the shards this rank holds when the live model is
sharded (FSDP2), whatever the world size that wrote it; a one-process checkpoint (all tensors
whole) is sharded the same way on load.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor

SHARDED_DIR = "sharded"  # the DCP files inside a checkpoint folder
_PLACEHOLDER = "__sharded__"


def split_tensors(state: Any, path: str = "") -> tuple[Any, dict[str, Tensor]]:
    """`state` with every tensor replaced by a placeholder naming its path, and the tensors."""
    tensors: dict[str, Tensor] = {}

    def walk(value: Any, at: str) -> Any:
        if isinstance(value, Tensor):
            tensors[at] = value.detach()
            return {_PLACEHOLDER: at}
        if isinstance(value, dict):
            return {
                key: walk(item, f"{at}/{key}" if at else str(key)) for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(
                walk(item, f"{at}/{i}" if at else str(i)) for i, item in enumerate(value)
            )
        return value

    return walk(state, path), tensors


def save_sharded(directory: Path, tensors: dict[str, Tensor]) -> None:
    """Every rank writes its own tensors (and its shards of sharded ones) into `directory`."""
    writer = HuggingFaceStorageWriter(str(directory), save_distributed=True)
    dcp.save({path: _storable(tensor) for path, tensor in tensors.items()}, storage_writer=writer)


def saved_paths(directory: Path) -> set[str]:
    """The tensor paths a sharded checkpoint holds."""
    return set(HuggingFaceStorageReader(str(directory)).read_metadata().state_dict_metadata)


def load_sharded(directory: Path, state: Any, template: Any = None) -> Any:
    """`state` (as rank 0 wrote it) with its placeholders filled from the shards in `directory`.

    Where `template` (the live state, same layout) holds a DTensor, the value is loaded into a
    DTensor of that sharding; elsewhere it is loaded whole.
    """
    reader = HuggingFaceStorageReader(str(directory))
    metadata = reader.read_metadata().state_dict_metadata
    targets: dict[str, Tensor] = {}

    def target(path: str, like: Any) -> Tensor:
        if isinstance(like, DTensor):
            return torch.empty_like(like)
        saved = metadata[path]
        return torch.empty(saved.size, dtype=saved.properties.dtype)

    def collect(value: Any, like: Any) -> None:
        if isinstance(value, dict) and _PLACEHOLDER in value:
            targets[value[_PLACEHOLDER]] = target(value[_PLACEHOLDER], like)
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(item, like.get(key) if isinstance(like, dict) else None)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                collect(item, like[i] if isinstance(like, list | tuple) and i < len(like) else None)

    collect(state, template)
    if targets:
        _load(targets, reader)
    return _fill(state, targets)


def shard_like(state: Any, template: Any) -> Any:
    """Whole tensors of `state` cut into the shards of the DTensors at the same places of
    `template` (a one-process checkpoint loaded by an FSDP2 job); the rest as it is."""
    if isinstance(template, DTensor) and isinstance(state, Tensor):
        if isinstance(state, DTensor):
            return state
        local = state.to(template.device_mesh.device_type)
        return distribute_tensor(
            local, template.device_mesh, template.placements, src_data_rank=None
        )
    if isinstance(state, dict) and isinstance(template, dict):
        return {key: shard_like(value, template.get(key)) for key, value in state.items()}
    if isinstance(state, list | tuple) and isinstance(template, list | tuple):
        items = [
            shard_like(v, template[i] if i < len(template) else None) for i, v in enumerate(state)
        ]
        return type(state)(items)
    return state


def with_optimizer_state(trainer: Any) -> None:
    """Give the trainer's optimizer its per-parameter state, so a sharded load has targets of
    the parameters' sharding; torch's `get_optimizer_state_dict` creates it (an lr-0 step on
    zero gradients), and the load overwrites every value."""
    module = getattr(trainer.model, "generator", trainer.model)
    get_optimizer_state_dict(module, trainer.optimizer)


def rank_rng_tensors(rank: int, rng: dict[str, Any]) -> dict[str, Tensor]:
    """This rank's RNG state (`runs/checkpoint.rng_state`) as tensors under `rng/<rank>/`."""
    _, tensors = split_tensors(rng, f"rng/{rank}")
    return tensors


def load_rank_rng(directory: Path, rank: int, layout: dict[str, Any]) -> dict[str, Any]:
    """This rank's saved RNG state, or rank 0's for a rank the writing job did not have.
    `layout` is this process's own RNG state, for its structure."""
    paths = saved_paths(directory)
    source = rank if any(path.startswith(f"rng/{rank}/") for path in paths) else 0
    skeleton, tensors = split_tensors(layout, f"rng/{source}")
    targets = {path: torch.empty_like(tensor) for path, tensor in tensors.items()}
    missing = [path for path in targets if path not in paths]
    for path in missing:  # e.g. saved without CUDA: keep this process's own stream
        targets.pop(path)
    _load(targets, HuggingFaceStorageReader(str(directory)))
    return _fill(skeleton, {**tensors, **targets})


def _load(targets: dict[str, Tensor], reader: HuggingFaceStorageReader) -> None:
    if dist.is_initialized():
        dcp.load(targets, storage_reader=reader)
        return
    with warnings.catch_warnings():  # one process reading a job's shards is what we mean
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(targets, storage_reader=reader, no_dist=True)


def _storable(tensor: Tensor) -> Tensor:
    """DCP writes CPU tensors and DTensors; safetensors takes contiguous data."""
    if isinstance(tensor, DTensor):
        return tensor
    return tensor.cpu().contiguous()


def _fill(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, dict) and _PLACEHOLDER in value:
        return tensors[value[_PLACEHOLDER]]
    if isinstance(value, dict):
        return {key: _fill(item, tensors) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_fill(item, tensors) for item in value)
    return value
