"""The reward server's wire format: videos and prompts in, named scores out, never pickle.

A body is a safetensors file or a NumPy .npz archive (loaded with allow_pickle=False), chosen by
its Content-Type; the answer comes back in the request's format.
- request: tensor `videos` (B, F, H, W, 3), uint8 (0-255, as a video file holds them) or float32
  in [0, 1]; the B prompts as JSON in the safetensors metadata key `prompts`, or as the
  unicode array `prompts` of the .npz.
- answer: one float32 (B,) tensor per component.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

SAFETENSORS = "application/x-safetensors"
NPZ = "application/x-npz"
CONTENT_TYPES = {"safetensors": SAFETENSORS, "npz": NPZ}
VIDEO_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
# safetensors files open with the little-endian u64 length of their JSON header.
SAFETENSORS_HEADER_LENGTH = struct.Struct("<Q")


class WireError(ValueError):
    """A body that does not follow the format above."""


def _safetensors_metadata(body: bytes) -> dict[str, str]:
    (length,) = SAFETENSORS_HEADER_LENGTH.unpack_from(body)
    start = SAFETENSORS_HEADER_LENGTH.size
    header = json.loads(body[start : start + length])
    return header.get("__metadata__") or {}


def _encode(tensors: dict[str, Tensor], content_type: str, prompts: list[str] | None) -> bytes:
    if content_type == SAFETENSORS:
        metadata = None if prompts is None else {"prompts": json.dumps(prompts)}
        return save_safetensors({k: v.contiguous() for k, v in tensors.items()}, metadata)
    if content_type == NPZ:
        arrays = {name: tensor.numpy() for name, tensor in tensors.items()}
        if prompts is not None:
            arrays["prompts"] = np.array(prompts, dtype=np.str_)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()
    raise WireError(f"unsupported content type {content_type!r}; use {SAFETENSORS} or {NPZ}")


def _decode(body: bytes, content_type: str) -> tuple[dict[str, Tensor], list[str] | None]:
    try:
        if content_type == SAFETENSORS:
            tensors = load_safetensors(body)
            prompts = _safetensors_metadata(body).get("prompts")
            return tensors, None if prompts is None else json.loads(prompts)
        if content_type == NPZ:
            with np.load(io.BytesIO(body), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            prompts = arrays.pop("prompts", None)
            tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
            return tensors, None if prompts is None else [str(p) for p in prompts.tolist()]
    except (SafetensorError, ValueError, OSError, struct.error) as error:
        raise WireError(f"body is not a valid {content_type} payload: {error}") from error
    raise WireError(f"unsupported content type {content_type!r}; use {SAFETENSORS} or {NPZ}")


def encode_request(videos: Tensor, prompts: list[str], content_type: str, dtype: str) -> bytes:
    """Videos in [0, 1] as uint8 (rounded, 4× smaller) or float32 (exact), and their prompts."""
    videos = videos.detach().to("cpu", torch.float32).clamp(0, 1)
    if dtype == "uint8":
        videos = videos.mul(255).round().to(torch.uint8)
    return _encode({"videos": videos}, content_type, prompts)


def decode_request(body: bytes, content_type: str) -> tuple[Tensor, list[str]]:
    """Float32 videos in [0, 1] and their prompts, checked against each other."""
    tensors, prompts = _decode(body, content_type)
    videos = tensors.get("videos")
    if videos is None or prompts is None:
        raise WireError("a request needs the tensor 'videos' and the prompts")
    if videos.dtype not in VIDEO_DTYPES.values():
        raise WireError(f"videos must be uint8 or float32, not {videos.dtype}")
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[0] != len(prompts):
        raise WireError(
            f"videos {tuple(videos.shape)} must be (B, F, H, W, 3) with one prompt each "
            f"({len(prompts)} prompts)"
        )
    videos = videos.float().div(255) if videos.dtype == torch.uint8 else videos
    return videos, [str(p) for p in prompts]


def encode_scores(scores: dict[str, Tensor], content_type: str) -> bytes:
    return _encode({k: v.to("cpu", torch.float32) for k, v in scores.items()}, content_type, None)


def decode_scores(body: bytes, content_type: str) -> dict[str, Tensor]:
    return _decode(body, content_type)[0]
