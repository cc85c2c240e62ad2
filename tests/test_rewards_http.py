"""The reward server and its client on localhost: the reward's scores, failures as specified."""

from __future__ import annotations

import io
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from videogrpo.errors import UserError
from videogrpo.rewards.guarded import GuardedReward
from videogrpo.rewards.http import HttpReward, RewardServerError
from videogrpo.rewards.serve import make_server
from videogrpo.rewards.wire import NPZ, SAFETENSORS


class Brightness:
    """Mean brightness and prompt length; raises on a prompt asking for it."""

    components = ("brightness", "length")

    def __init__(self):
        self.calls = 0

    def __call__(self, videos, prompts):
        self.calls += 1
        if "explode" in prompts:
            raise RuntimeError("the reward model exploded")
        return {
            "brightness": videos.mean(dim=(1, 2, 3, 4)),
            "length": torch.tensor([float(len(p)) for p in prompts]),
        }


@pytest.fixture
def served():
    reward = Brightness()
    server = make_server(reward, "127.0.0.1", 0, batch_size=2)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield reward, server, f"http://{host}:{port}"
    server.shutdown()
    server.server_close()


VIDEOS = torch.rand(3, 2, 4, 5, 3, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a", "bb", "ccc"]


@pytest.mark.parametrize("format", ["safetensors", "npz"])
def test_float32_videos_score_exactly_as_the_reward_does(served, format):
    reward, _, url = served
    client = HttpReward(url, format=format, video_dtype="float32")
    assert client.components == ("brightness", "length")
    scores = client(VIDEOS, PROMPTS)
    expected = Brightness()(VIDEOS, PROMPTS)
    for name in client.components:
        torch.testing.assert_close(scores[name], expected[name], rtol=0, atol=0)
    assert reward.calls == 2  # the server's batch_size 2 splits 3 videos into 2 calls


def test_uint8_videos_score_as_the_reward_does_on_8_bit_frames(served):
    _, _, url = served
    scores = HttpReward(url)(VIDEOS, PROMPTS)
    eight_bit = VIDEOS.mul(255).round().div(255)
    expected = Brightness()(eight_bit, PROMPTS)["brightness"]
    torch.testing.assert_close(scores["brightness"], expected, rtol=0, atol=1e-7)


def test_an_error_in_the_reward_is_reported_not_retried(served):
    reward, _, url = served
    client = HttpReward(url, retries=3, retry_wait=0.0)
    with pytest.raises(RewardServerError, match="500: RuntimeError: the reward model exploded"):
        client(VIDEOS[:1], ["explode"])
    assert reward.calls == 1


def test_a_server_that_went_away_costs_the_chunk_after_retries(served):
    reward, server, url = served
    client = GuardedReward(HttpReward(url, retries=2, retry_wait=0.01))
    server.shutdown()
    server.server_close()
    scores = client(VIDEOS, PROMPTS)
    assert scores["brightness"].isnan().all() and scores["length"].isnan().all()
    (failure,) = client.take_failures()
    assert failure.samples == 3 and "failed 3 tries" in failure.reason
    assert reward.calls == 0


def test_an_unreachable_server_at_start_is_a_one_line_user_error(served):
    _, server, url = served
    server.shutdown()
    server.server_close()
    with pytest.raises(UserError, match="no reward server answers at") as caught:
        HttpReward(url)
    assert "\n" not in str(caught.value) and "serve-reward" in str(caught.value)


def post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{url}/score", data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_unreadable_or_pickled_bodies_are_bad_requests(served):
    reward, _, url = served
    assert post(url, b"not a safetensors file", SAFETENSORS)[0] == 400
    pickled = io.BytesIO()
    prompts = np.array(PROMPTS, dtype=object)  # object arrays need pickle to load
    np.savez(pickled, videos=VIDEOS.numpy(), prompts=prompts)
    status, body = post(url, pickled.getvalue(), NPZ)
    assert status == 400 and b"pickle" in body.lower()
    assert post(url, b"{}", "application/json")[0] == 400
    assert reward.calls == 0
