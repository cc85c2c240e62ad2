"""`reward.type: python`: a user function by module name or file, its names known up front."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from videogrpo.errors import UserError
from videogrpo.rewards.python import PROBE_SHAPE, PythonReward

USER_MODULE = textwrap.dedent(
    """
    import numpy as np

    calls = []

    def brightness_and_red(videos, prompts):
        calls.append(tuple(videos.shape))
        return {
            "brightness": videos.mean(dim=(1, 2, 3, 4)),
            "red": np.asarray(videos[..., 0].mean(dim=(1, 2, 3))),  # arrays are fine too
        }

    def declared(videos, prompts):
        if videos.shape[0] == 1:
            raise RuntimeError("no probing, please")
        return {"length": [float(len(p)) for p in prompts]}

    declared.components = ["length"]

    def broken(videos, prompts):
        raise RuntimeError("model weights missing")

    not_a_function = 3
    """
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_scores.py"
    path.write_text(USER_MODULE)
    return path


def test_a_file_function_is_probed_for_its_names_and_scores_as_it_says(user_file):
    reward = PythonReward(f"{user_file}:brightness_and_red")
    assert reward.components == ("brightness", "red")
    videos = torch.rand(3, 4, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    scores = reward(videos, ["a", "b", "c"])
    torch.testing.assert_close(scores["brightness"], videos.mean(dim=(1, 2, 3, 4)))
    torch.testing.assert_close(scores["red"], videos[..., 0].mean(dim=(1, 2, 3)))
    assert scores["red"].dtype == torch.float32


def test_a_module_on_sys_path_with_declared_names_is_never_probed(user_file, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    monkeypatch.setitem(sys.modules, "my_scores", None)  # restored (removed) after the test
    del sys.modules["my_scores"]
    reward = PythonReward("my_scores:declared")
    assert reward.components == ("length",)
    module = __import__("my_scores")
    assert module.calls == []
    scores = reward(torch.zeros(2, 3, 4, 4, 3), ["ab", "abcd"])
    torch.testing.assert_close(scores["length"], torch.tensor([2.0, 4.0]))


def test_the_components_option_wins_over_probing(user_file):
    reward = PythonReward(f"{user_file}:brightness_and_red", components=["red"])
    assert reward.components == ("red",)
    assert set(reward(torch.zeros(2, 3, 4, 4, 3), ["a", "b"])) == {"red"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected MODULE:NAME"),
        ("surely_not_a_module_xyz:fn", "cannot import 'surely_not_a_module_xyz'"),
        ("{file}:missing", "has no 'missing'"),
        ("{file}:not_a_function", "not callable"),
        ("{file}:broken", "declare them: reward.options.components"),
        ("{dir}/absent.py:fn", "not found"),
    ],
)
def test_bad_functions_are_one_line_user_errors(user_file, spec, message):
    spec = spec.format(file=user_file, dir=user_file.parent)
    with pytest.raises(UserError, match=message) as caught:
        PythonReward(spec)
    assert "\n" not in str(caught.value)


def test_the_probe_is_one_small_clip(user_file):
    reward = PythonReward(f"{user_file}:brightness_and_red")
    module = reward.function.__globals__
    assert module["calls"] == [PROBE_SHAPE]
