"""The learned and external rewards driven through the CLI alone, on the tiny random model.

These are the external checks of issue 15: a user function and a CLIP folder named on the
command line train a preset; bad reward input is exit status 2 with one stderr line and nothing
written.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
from conftest import PRESETS_DIR, tiny_settings
from tiny_rewards import build_tiny_clip

from videogrpo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

USER_REWARD = textwrap.dedent(
    """
    def brightness(videos, prompts):
        red = videos[..., 0].mean(dim=(1, 2, 3))
        return {"brightness": videos.mean(dim=(1, 2, 3, 4)), "redness": red}
    """
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("pickscore"))


def train(capsys, model_dir, output_dir, preset, *overrides):
    args = ["train", PRESETS_DIR / f"{preset}.yaml", "--quiet"]
    for setting in [*tiny_settings(model_dir, output_dir, iterations=1), *overrides]:
        args += ["--set", setting]
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def only_run(output_dir):
    (run_dir,) = list(output_dir.iterdir())
    return run_dir


def metrics_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_python_function_trains_a_preset_weighting_its_components_equally(
    tiny_model_dir, tmp_path, capsys, caplog
):
    module = tmp_path / "my_scores.py"
    module.write_text(USER_REWARD)
    output_dir = tmp_path / "runs"
    code, _, err = train(
        capsys,
        tiny_model_dir,
        output_dir,
        "flowgrpo",
        "reward.type=python",
        f"reward.options.function={module}:brightness",
    )
    assert code == 0, err
    assert "weighting its components brightness, redness equally" in caplog.text
    run_dir = only_run(output_dir)
    (metrics,) = metrics_of(run_dir)
    assert 0 < metrics["reward/brightness_mean"] < 1 and 0 < metrics["reward/redness_mean"] < 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["eval_after"]) >= {"brightness", "redness"}


def test_pickscore_from_a_clip_folder_trains_a_preset(tiny_model_dir, clip_dir, tmp_path, capsys):
    output_dir = tmp_path / "runs"
    code, _, err = train(
        capsys,
        tiny_model_dir,
        output_dir,
        "flowgrpo",
        "reward.type=pickscore",
        f"reward.options.path={clip_dir}",
        "reward.options.device=cpu",
        "reward.weights={pickscore: 1.0}",
    )
    assert code == 0, err
    (metrics,) = metrics_of(only_run(output_dir))
    assert "reward/pickscore_mean" in metrics and "reward/vq_mean" not in metrics


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["reward.type=pickscore", "reward.options.path={empty}"], "no config.json"),
        (["reward.type=videoalign", "reward.options.path={empty}"], "no model_config.json"),
        (
            [
                "reward.type=clipscore",
                "reward.options.path={clip}",
                "reward.curriculum=staged",
                "reward.order=[clipscore, motion]",
                "reward.thresholds=[0.5]",
            ],
            "'motion'",
        ),
        (["reward.type=http", "reward.options.url=http://127.0.0.1:9"], "no reward server"),
        (["reward.type=python", "reward.options.function=nowhere_xyz:f"], "cannot import"),
    ],
)
def test_bad_reward_input_is_one_line_before_anything_is_written(
    tiny_model_dir, clip_dir, tmp_path, capsys, overrides, needle
):
    empty = tmp_path / "empty"
    empty.mkdir()
    overrides = [o.format(empty=empty, clip=clip_dir) for o in overrides]
    output_dir = tmp_path / "runs"
    code, _, err = train(capsys, tiny_model_dir, output_dir, "sage", *overrides)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_the_reward_type_help_names_every_built_in_reward():
    from videogrpo.config.settings import RewardConfig
    from videogrpo.rewards.registry import BUILTIN_REWARDS

    (field,) = [f for f in dataclasses.fields(RewardConfig) if f.name == "type"]
    assert all(name in field.metadata["help"] for name in BUILTIN_REWARDS)
