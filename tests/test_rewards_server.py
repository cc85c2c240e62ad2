"""`videogrpo serve-reward` as its own process, and training through `reward.type: http`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import PRESETS_DIR, tiny_settings

from videogrpo.cli import main
from videogrpo.rewards.http import HttpReward

pytestmark = pytest.mark.usefixtures("one_thread")

SERVED_MODULE = textwrap.dedent(
    """
    import os
    import sys

    calls = 0

    def brightness(videos, prompts):
        global calls
        calls += 1
        print(f"call {calls}: {len(prompts)} videos", file=sys.stderr, flush=True)
        if calls == int(os.environ.get("SERVED_FAIL_CALL", 0)):
            raise RuntimeError(f"scorer failed on call {calls}")
        if calls == int(os.environ.get("SERVED_EXIT_CALL", 0)):
            os._exit(1)  # the server dies mid-run
        return {"brightness": videos.mean(dim=(1, 2, 3, 4))}
    """
)


@pytest.fixture
def served_config(tmp_path):
    module = tmp_path / "served.py"
    module.write_text(SERVED_MODULE)
    config = tmp_path / "reward.yaml"
    config.write_text(
        f"type: python\noptions:\n  function: {module}:brightness\n"
        "  components: [brightness]\nbatch_size: 2\n"
    )
    return config


def start_server(config, **environment) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **environment}
    command = [sys.executable, "-m", "videogrpo", "serve-reward", str(config), "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    ready = process.stdout.readline()
    match = re.search(r"on (http://\S+)", ready)
    if match is None:
        process.kill()
        raise AssertionError(f"server did not start: {ready!r} {process.stderr.read()}")
    return process, match.group(1)


def stop(process: subprocess.Popen) -> str:
    process.kill()
    _, err = process.communicate(timeout=30)
    return err


def test_the_served_reward_scores_as_it_does_in_process(served_config):
    process, url = start_server(served_config)
    try:
        client = HttpReward(url)
        videos = torch.rand(3, 2, 4, 4, 3, generator=torch.Generator().manual_seed(0))
        scores = client(videos, ["a", "b", "c"])
    finally:
        err = stop(process)
    assert client.components == ("brightness",)
    eight_bit = videos.mul(255).round().div(255)
    torch.testing.assert_close(scores["brightness"], eight_bit.mean(dim=(1, 2, 3, 4)))
    assert "call 1: 2 videos" in err and "call 2: 1 videos" in err  # the server's batch_size


def test_a_preset_trains_two_iterations_through_the_server(
    served_config, tiny_model_dir, tmp_path, capsys
):
    process, url = start_server(served_config)
    output_dir = tmp_path / "runs"
    args = ["train", str(PRESETS_DIR / "sage.yaml"), "--quiet"]
    overrides = tiny_settings(tiny_model_dir, output_dir) + [
        "run.name=run",
        "reward.type=http",
        f"reward.options.url={url}",
        "reward.weights={brightness: 1.0}",
    ]
    try:
        for setting in overrides:
            args += ["--set", setting]
        code = main(args)
    finally:
        err = stop(process)
    assert code == 0, capsys.readouterr().err
    metrics = [
        json.loads(line) for line in (output_dir / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert all(0 < m["reward/brightness_mean"] < 1 for m in metrics)
    # 2 eval videos before and after, 4 rollout videos per iteration, 2 per served call.
    assert err.count(": 2 videos") == 1 + 2 + 2 + 1
