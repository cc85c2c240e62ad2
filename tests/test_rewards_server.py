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


def train_through(url, model_dir, output_dir, capsys, *extra, resume=None):
    overrides = tiny_settings(model_dir, output_dir, iterations=4) + [
        "run.name=run",
        "reward.type=http",
        f"reward.options.url={url}",
        "reward.options.retries=1",
        "reward.options.retry_wait=0.05",
        "reward.batch_size=2",  # 2 calls per iteration: one per group of 2
        "reward.weights={brightness: 1.0}",
        *extra,
    ]
    args = [
        "train",
        "--quiet",
        *(["--resume", resume] if resume else [str(PRESETS_DIR / "sage.yaml")]),
    ]
    for setting in overrides:
        args += ["--set", setting]
    code = main(args)
    return code, capsys.readouterr().err


def test_a_server_dying_mid_run_stops_it_after_a_good_checkpoint_and_resume_finishes_it(
    served_config, tiny_model_dir, tmp_path, capsys
):
    """Calls: 1 eval, 2-3 iteration 1, 4-5 iteration 2, 6-7 iteration 3. Call 4 raises: one group
    of iteration 2 has no score, is counted, and the run goes on. The server dies at call 6: no
    sample of iteration 3 can be scored, so the run stops, iterations 1-2 kept and checkpointed.
    Resumed against a new server, it finishes exactly as a run whose server never died."""
    from videogrpo.runs.checkpoint import load_state

    process, url = start_server(served_config, SERVED_FAIL_CALL="4", SERVED_EXIT_CALL="6")
    try:
        code, err = train_through(url, tiny_model_dir, tmp_path / "runs", capsys)
    finally:
        served_err = stop(process)
    assert "call 6" in served_err
    run_dir = tmp_path / "runs/run"
    lines = err.strip().splitlines()
    assert code == 4 and len(lines) == 1, err  # a run stopped with a checkpoint, not bad input
    assert "iteration 3: the reward failed for every sample" in lines[0]
    assert f"reward server {url} failed 2 tries" in lines[0]
    assert f"--resume {run_dir}" in lines[0]
    metrics = read_metrics(run_dir)
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert [m["reward/failed_samples"] for m in metrics] == [0, 2]
    assert [m["reward/failed_calls"] for m in metrics] == [0, 1]
    assert all(0 < m["reward/brightness_mean"] < 1 for m in metrics)
    assert load_state(run_dir / "checkpoint")["trainer"]["iteration"] == 2
    assert not (run_dir / "summary.json").exists()

    process, url = start_server(served_config)
    try:
        code, err = train_through(
            url, tiny_model_dir, tmp_path / "runs", capsys, resume=str(run_dir)
        )
    finally:
        stop(process)
    assert code == 0, err
    resumed = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [m["iteration"] for m in resumed] == [1, 2, 3, 4]
    assert summary["reward_failed_samples"] == 2

    process, url = start_server(served_config, SERVED_FAIL_CALL="4")
    try:
        code, err = train_through(url, tiny_model_dir, tmp_path / "uninterrupted", capsys)
    finally:
        stop(process)
    assert code == 0, err
    for resumed_row, row in zip(resumed, read_metrics(tmp_path / "uninterrupted/run"), strict=True):
        same = {key for key in row if not key.startswith("time/")}
        assert {k: resumed_row[k] for k in same} == {k: row[k] for k in same}


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "not found"),
        ("type: python\nweights: {a: 1}\n", "unknown keys ['weights']"),
        ("options: {}\n", "expected a reward section"),
        ("type: nowhere_xyz:Reward\n", "cannot import 'nowhere_xyz'"),
        ("type: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_reward_configs_do_not_start_a_server(tmp_path, capsys, content, needle):
    config = tmp_path / "reward.yaml"
    if content is not None:
        config.write_text(content)
    code = main(["serve-reward", str(config), "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
