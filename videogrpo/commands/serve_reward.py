"""`videogrpo serve-reward REWARD.yaml`: serve one reward over HTTP for `reward.type: http`."""

from __future__ import annotations

import argparse

HELP = "Serve a reward over HTTP (for reward.type=http): GET /info, POST /score."

DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        metavar="REWARD.yaml",
        help="A reward section (type, options, batch_size) or a training config holding one.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="Port to listen on (0: any free one)."
    )
    parser.add_argument("--log-requests", action="store_true", help="Log each request.")


def run(args: argparse.Namespace) -> int:
    from videogrpo.errors import UserError
    from videogrpo.rewards.serve import load_served_reward, make_server

    name, reward, batch_size = load_served_reward(args.config)
    try:
        server = make_server(reward, args.host, args.port, batch_size, quiet=not args.log_requests)
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({error.strerror})") from error
    host, port = server.server_address[:2]
    components = ", ".join(reward.components)
    print(f"serving reward {name!r} ({components}) on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
