"""Video writers: what is written reads back with the right size, frames and colours, atomically."""

import numpy as np
import pytest
import torch

from videogrpo.errors import UserError
from videogrpo.runs.video_io import (
    MIN_VIEW_SIDE,
    read_video,
    tile_origin,
    video_grid,
    write_gif,
    write_mp4,
)

FRAMES, SIDE = 8, 32
CODEC_TOLERANCE = 0.06  # lossy H.264 + yuv420p chroma rounding on a flat colour


def solid(colour, frames=FRAMES, height=SIDE, width=SIDE):
    return np.broadcast_to(np.asarray(colour, np.float32), (frames, height, width, 3)).copy()


def moving_square(frames=FRAMES, side=SIDE, size=8):
    """A white square moving right on black: every frame differs, so no frame is merged."""
    video = np.zeros((frames, side, side, 3), np.float32)
    for t in range(frames):
        video[t, 4 : 4 + size, 2 * t : 2 * t + size] = 1.0
    return video


def test_mp4_round_trip_keeps_frames_size_and_colour(tmp_path):
    path = write_mp4(tmp_path / "red.mp4", solid([1.0, 0.0, 0.0]))
    back = read_video(path)
    factor = MIN_VIEW_SIDE // SIDE
    assert back.shape == (FRAMES, SIDE * factor, SIDE * factor, 3)
    np.testing.assert_allclose(back.mean(axis=(0, 1, 2)), [1.0, 0.0, 0.0], atol=CODEC_TOLERANCE)
    assert [p.name for p in tmp_path.iterdir()] == ["red.mp4"]  # no temporary left behind


def test_mp4_accepts_torch_and_makes_odd_sizes_even(tmp_path):
    video = torch.full((3, 5, 7, 3), 0.5, requires_grad=True)
    back = read_video(write_mp4(tmp_path / "odd.mp4", video, upscale=1))
    height, width = back.shape[1:3]
    assert height % 2 == 0 and width % 2 == 0 and min(height, width) >= 16
    assert abs(back.mean() - 0.5) < CODEC_TOLERANCE


def test_gif_loops_and_round_trips_exactly(tmp_path):
    import imageio.v3 as iio

    video = moving_square()
    path = write_gif(tmp_path / "square.gif", video, upscale=2)
    assert iio.immeta(path)["loop"] == 0  # loop forever
    back = read_video(path)
    expected = video.repeat(2, axis=1).repeat(2, axis=2)
    assert back.shape == expected.shape
    np.testing.assert_allclose(back, expected, atol=1 / 255)


def test_grid_puts_video_i_at_its_tile():
    colours = np.linspace(0.1, 0.9, 5)
    batch = np.stack([solid([c, 1 - c, c / 2], frames=2, height=4, width=6) for c in colours])
    grid = video_grid(batch, ncols=2)
    assert grid.shape == (2, 3 * 4 + 2, 2 * 6 + 1, 3)  # 3 rows × 2 cols with 1 px separators
    for index, clip in enumerate(batch):
        top, left = tile_origin(index, 2, 4, 6)
        np.testing.assert_array_equal(grid[:, top : top + 4, left : left + 6], clip)
    assert (grid[:, 4, :] == 1.0).all()  # separator row
    assert (grid[:, 10:, 7:] == 1.0).all()  # the empty sixth cell stays blank


@pytest.mark.parametrize(
    "video, message",
    [
        (np.zeros((8, 32, 32)), "shape"),
        (np.zeros((8, 32, 32, 4)), "shape"),
        (np.zeros((0, 32, 32, 3)), "shape"),
        (np.zeros((8, 32, 32, 3), np.uint8), "dtype"),
        (np.full((2, 4, 4, 3), 1.5), "span"),
        (np.full((2, 4, 4, 3), np.nan), "NaN"),
    ],
)
def test_bad_videos_raise_user_errors(tmp_path, video, message):
    with pytest.raises(UserError, match=message):
        write_gif(tmp_path / "bad.gif", video)
    assert not list(tmp_path.iterdir())


def test_bad_grid_arguments_raise_user_errors():
    with pytest.raises(UserError, match="shape"):
        video_grid(solid([0, 0, 0]), ncols=2)  # not batched
    with pytest.raises(UserError, match="ncols"):
        video_grid(solid([0, 0, 0])[None], ncols=0)


def test_missing_folder_and_file_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_mp4(tmp_path / "nope" / "a.mp4", solid([0, 0, 0]))
    with pytest.raises(UserError, match="not found"):
        read_video(tmp_path / "missing.gif")
