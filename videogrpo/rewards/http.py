"""`reward.type: http`: a reward scored by a server, for models that need their own environment.

Start the server where the reward model lives with `videogrpo serve-reward REWARD.yaml`; point
`reward.options.url` at it. The client asks the server for its component names when the run is
built (an unreachable server stops the run before anything is written), then posts each chunk
of videos (see wire.py). A connection that fails or times out is retried `retries` times, waiting
`retry_wait`, 2·`retry_wait`, … seconds; a chunk that still fails raises, which the trainer's
GuardedReward turns into NaN for that chunk's samples. An error the reward itself raised on the
server (HTTP 500) is not retried: the same videos would fail the same way.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

from torch import Tensor

from videogrpo.errors import UserError
from videogrpo.rewards.frames import check_batch
from videogrpo.rewards.guarded import one_line
from videogrpo.rewards.wire import CONTENT_TYPES, VIDEO_DTYPES, decode_scores, encode_request

# Gateway statuses: a proxy in front of the server could not reach it this time.
RETRIED_STATUSES = (502, 503, 504)
# Seconds to wait for the server's component names when the run is built.
INFO_TIMEOUT = 10.0


class RewardServerError(RuntimeError):
    """The server could not score a chunk: unreachable after retries, or it reported an error."""


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return error.reason


class HttpReward:
    """Client of a `videogrpo serve-reward` server."""

    def __init__(
        self,
        url: str,
        timeout: float = 300.0,
        retries: int = 2,
        retry_wait: float = 2.0,
        format: str = "safetensors",
        video_dtype: str = "uint8",
    ) -> None:
        if format not in CONTENT_TYPES:
            raise UserError(
                f"reward.options.format: {format!r} is not one of {list(CONTENT_TYPES)}"
            )
        if video_dtype not in VIDEO_DTYPES:
            raise UserError(
                f"reward.options.video_dtype: {video_dtype!r} is not one of {list(VIDEO_DTYPES)}"
            )
        if timeout <= 0 or retries < 0 or retry_wait < 0:
            raise UserError(
                "reward.options: timeout must be > 0, retries and retry_wait >= 0; got "
                f"{timeout}, {retries}, {retry_wait}"
            )
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.retry_wait = timeout, retries, retry_wait
        self.content_type = CONTENT_TYPES[format]
        self.video_dtype = video_dtype
        self.components: tuple[str, ...] = self._server_components()

    def _server_components(self) -> tuple[str, ...]:
        try:
            with urllib.request.urlopen(f"{self.url}/info", timeout=INFO_TIMEOUT) as response:
                components = json.loads(response.read())["components"]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
            raise UserError(
                f"reward.options.url: no reward server answers at {self.url} ({one_line(error)}); "
                "start one with `videogrpo serve-reward REWARD.yaml`"
            ) from error
        return tuple(str(name) for name in components)

    def __call__(self, videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        check_batch(videos, prompts)
        body = encode_request(videos, prompts, self.content_type, self.video_dtype)
        request = urllib.request.Request(
            f"{self.url}/score",
            data=body,
            headers={"Content-Type": self.content_type, "Accept": self.content_type},
            method="POST",
        )
        failure: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_wait * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return decode_scores(response.read(), response.headers.get_content_type())
            except urllib.error.HTTPError as error:
                if error.code not in RETRIED_STATUSES:
                    raise RewardServerError(
                        f"reward server {self.url} answered {error.code}: {_error_detail(error)}"
                    ) from error
                failure = error
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out
                failure = error
        raise RewardServerError(
            f"reward server {self.url} failed {self.retries + 1} tries, the last with "
            f"{one_line(failure)}"
        ) from failure
