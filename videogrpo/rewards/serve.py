"""The reward server behind `videogrpo serve-reward`: one reward over HTTP (wire.py's format).

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
from pathlib import Path

import torch

from videogrpo.errors import UserError
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


SERVED_KEYS = ("type", "options", "batch_size")


def load_served_reward(path: str) -> tuple[str, RewardModel, int]:
    """(type, reward, batch size) of a YAML reward section, alone or in a training config.

    The server serves one reward, unguarded: an error it raises goes back to the client, which
    reports it (reward.additional of a training config is the client's business, not served).
    """
    import yaml

    from videogrpo.rewards.registry import build_one

    file = Path(path)
    if not file.is_file():
        raise UserError(f"reward config {path!r} not found")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"reward config {path!r} is not valid YAML: {one_line(error)}") from error
    in_training_config = isinstance(data, dict) and isinstance(data.get("reward"), dict)
    section = data["reward"] if in_training_config else data
    if not isinstance(section, dict) or "type" not in section:
        raise UserError(
            f"reward config {path!r}: expected a reward section with {', '.join(SERVED_KEYS)} "
            "(or a training config holding one under `reward:`)"
        )
    unknown = sorted(set(section) - set(SERVED_KEYS))
    if unknown and not in_training_config:
        raise UserError(f"reward config {path!r}: unknown keys {unknown}; allowed {SERVED_KEYS}")
    options, batch_size = section.get("options") or {}, section.get("batch_size", 0)
    if not isinstance(options, dict) or not isinstance(batch_size, int) or batch_size < 0:
        raise UserError(
            f"reward config {path!r}: options must be a mapping, batch_size an int >= 0"
        )
    name = str(section["type"])
    return name, build_one(name, options, "reward"), batch_size
