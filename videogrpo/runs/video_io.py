"""Writing and reading the project's videos: float (F, H, W, 3) clips in [0, 1] as mp4 or gif.

The clips of the default world are tiny (8 frames of 32×32), so the writers upscale them with
nearest-neighbour by an integer factor for viewing (pixels stay crisp; no resampling blur hides
artifacts). Every write goes to a temporary file in the destination folder and is then renamed
over the target, so an interrupted run never leaves a half-written video behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from videogrpo.errors import UserError

DEFAULT_FPS = 8
# Default upscale: the smallest integer factor that makes the short side at least this many pixels.
MIN_VIEW_SIDE = 128
# Floor on each mp4 side: libx264 encodes tiny frames, but some players refuse them.
MIN_MP4_SIDE = 16
# Slack allowed outside [0, 1] (float round-off of a decoder); values inside it are clipped.
RANGE_TOLERANCE = 1e-3
# Grid separator: its width in source pixels and its value (white reads as "gap" on any clip).
SEPARATOR_PX = 1
SEPARATOR_VALUE = 1.0
MP4_CODEC = "libx264"
MP4_PIXEL_FORMAT = "yuv420p"  # the only 4:2:0 format every browser and player decodes
GIF_LOOP_FOREVER = 0


def _to_numpy(video: Any) -> np.ndarray:
    """Accept numpy arrays and torch tensors (any device, with or without grad) alike."""
    if hasattr(video, "detach"):
        video = video.detach().float().cpu().numpy()
    return np.asarray(video)


def _check_video(video: Any, batched: bool = False) -> np.ndarray:
    """Validate shape, dtype and range; return float32 in [0, 1] with round-off clipped."""
    array = _to_numpy(video)
    expected = "(B, F, H, W, 3)" if batched else "(F, H, W, 3)"
    ndim = 5 if batched else 4
    if array.ndim != ndim or array.shape[-1] != 3 or 0 in array.shape:
        raise UserError(
            f"video has shape {tuple(array.shape)}; expected a non-empty {expected} RGB array"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(
            f"video has dtype {array.dtype}; expected floats in [0, 1] (divide uint8 by 255)"
        )
    if not np.isfinite(array).all():
        raise UserError("video contains NaN or infinite values; expected floats in [0, 1]")
    low, high = float(array.min()), float(array.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise UserError(
            f"video values span [{low:.4g}, {high:.4g}]; expected [0, 1] (clamp the decoder output)"
        )
    return np.clip(array, 0.0, 1.0).astype(np.float32, copy=False)


def _upscale_factor(height: int, width: int, upscale: int | None, min_side: int = 1) -> int:
    """The requested factor (default: short side ≥ MIN_VIEW_SIDE), raised to reach `min_side`."""
    if upscale is None:
        upscale = math.ceil(MIN_VIEW_SIDE / min(height, width))
    elif isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise UserError(f"upscale: {upscale!r} is not a positive integer factor")
    return max(upscale, math.ceil(min_side / min(height, width)))


def _to_uint8_frames(video: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale by `factor` and quantise to uint8."""
    frames = np.rint(video * 255.0).astype(np.uint8)
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    return frames


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    The temporary name keeps `suffix` because writers pick their format from the extension.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield temp
        os.chmod(temp, 0o666 & ~umask)  # mkstemp's 0600 → the mode of the run's other files
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_mp4(
    path: str | Path, video: Any, fps: float = DEFAULT_FPS, upscale: int | None = None
) -> Path:
    """Write an H.264 mp4 (yuv420p, so any player opens it) upscaled for viewing.

    yuv420p needs even sides, so an odd upscaled side gains one replicated edge row/column.
    """
    import imageio.v2 as imageio  # imported here: the ffmpeg plugin is only needed to write

    clip = _check_video(video)
    height, width = clip.shape[1:3]
    frames = _to_uint8_frames(clip, _upscale_factor(height, width, upscale, MIN_MP4_SIDE))
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_output(path, suffix=".mp4") as temp:
        writer = imageio.get_writer(
            temp,
            format="FFMPEG",
            fps=fps,
            codec=MP4_CODEC,
            pixelformat=MP4_PIXEL_FORMAT,
            macro_block_size=1,  # sizes are made even above; do not let imageio resize
            ffmpeg_log_level="error",
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return Path(path)


def write_gif(
    path: str | Path, video: Any, fps: float = DEFAULT_FPS, upscale: int | None = None
) -> Path:
    """Write a looping gif upscaled for viewing (the report embeds these).

    Pillow merges identical consecutive frames (adding their durations), so playback is
    unchanged but `read_video` may return fewer frames for a clip with static stretches.
    """
    import imageio.v3 as iio

    clip = _check_video(video)
    frames = _to_uint8_frames(clip, _upscale_factor(*clip.shape[1:3], upscale))
    with atomic_output(path, suffix=".gif") as temp:
        iio.imwrite(temp, frames, extension=".gif", duration=1000.0 / fps, loop=GIF_LOOP_FOREVER)
    return Path(path)


def read_video(path: str | Path) -> np.ndarray:
    """Read an mp4 or gif back as float32 (F, H, W, 3) in [0, 1], the project's convention."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise UserError(f"video {str(path)!r} not found")
    try:
        frames = iio.imread(path, index=None)
    except Exception as error:  # imageio raises plugin-specific types for unreadable files
        raise UserError(f"cannot read video {str(path)!r}: {error}") from error
    if frames.ndim == 3:  # a single-frame file comes back as (H, W, C)
        frames = frames[None]
    return frames[..., :3].astype(np.float32) / 255.0


def video_grid(videos: Any, ncols: int) -> np.ndarray:
    """Tile a batch (B, F, H, W, 3) into one clip, row-major, with a thin white separator.

    Tile i sits at row i // ncols, column i % ncols; empty cells of the last row stay white.
    """
    batch = _check_video(videos, batched=True)
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise UserError(f"ncols: {ncols!r} is not a positive integer")
    count, frames, height, width, _ = batch.shape
    ncols = min(ncols, count)
    nrows = math.ceil(count / ncols)
    gap = SEPARATOR_PX
    grid = np.full(
        (frames, nrows * (height + gap) - gap, ncols * (width + gap) - gap, 3),
        SEPARATOR_VALUE,
        dtype=np.float32,
    )
    for index, clip in enumerate(batch):
        top, left = tile_origin(index, ncols, height, width)
        grid[:, top : top + height, left : left + width] = clip
    return grid


def tile_origin(index: int, ncols: int, height: int, width: int) -> tuple[int, int]:
    """Top-left pixel of tile `index` in a `video_grid` of `ncols` columns of (H, W) clips."""
    row, col = divmod(index, ncols)
    return row * (height + SEPARATOR_PX), col * (width + SEPARATOR_PX)
