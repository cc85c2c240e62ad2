"""The reward server behind `videogrpo serve-reward`: any reward over HTTP (wire.py's format).

GET /info answers {"components": [...]}; POST /score scores a body of videos and prompts and
answers the scores in the request's format. A body that cannot be read is a 400; an error the
reward raises is a 500 whose JSON names it, so the client reports the reward's own message. One
request is scored at a time: a reward model on a GPU is not made for concurrent calls.
"""

from __future__ import annotations

import json
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch

from videogrpo.rewards.base import RewardModel
from videogrpo.rewards.guarded import checked_scores, one_line
from videogrpo.rewards.wire import WireError, decode_request, encode_scores


@torch.no_grad()
def score_in_chunks(
    reward: RewardModel, videos: torch.Tensor, prompts: list[str], batch_size: int
) -> dict[str, torch.Tensor]:
    """All scores, `batch_size` videos per reward call (0: all at once)."""
    size = batch_size or len(prompts) or 1
    parts = [
        checked_scores(
            reward(videos[start : start + size], prompts[start : start + size]),
            tuple(reward.components),
            len(prompts[start : start + size]),
        )
        for start in range(0, len(prompts), size)
    ]
    return {name: torch.cat([part[name] for part in parts]) for name in reward.components}


def make_server(
    reward: RewardModel, host: str, port: int, batch_size: int = 0, quiet: bool = True
) -> HTTPServer:
    """A server bound to (host, port); port 0 picks a free one (see `server_address`)."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._answer(status, json.dumps({"error": message}).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
            if self.path != "/info":
                self._error(HTTPStatus.NOT_FOUND, f"no {self.path}; use GET /info, POST /score")
                return
            info = {"components": list(reward.components)}
            self._answer(HTTPStatus.OK, json.dumps(info).encode(), "application/json")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/score":
                self._error(HTTPStatus.NOT_FOUND, f"no {self.path}; use GET /info, POST /score")
                return
            content_type = self.headers.get_content_type()
            try:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                videos, prompts = decode_request(body, content_type)
            except (WireError, ValueError) as error:
                self._error(HTTPStatus.BAD_REQUEST, one_line(error))
                return
            try:
                scores = score_in_chunks(reward, videos, prompts, batch_size)
            except Exception as error:  # noqa: BLE001 - the client reports the reward's error
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, one_line(error))
                return
            self._answer(HTTPStatus.OK, encode_scores(scores, content_type), content_type)

        def log_message(self, format: str, *args: object) -> None:
            if not quiet:
                sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return HTTPServer((host, port), Handler)
