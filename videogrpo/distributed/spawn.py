"""Start a few ranks on this machine from Python, as torchrun would: for tests and benchmarks.

`torchrun --nproc_per_node N -m videogrpo train …` is how runs are launched; this helper runs a
function on N local processes with the same environment (RANK, WORLD_SIZE, MASTER_ADDR, …), so
a test can compare N ranks with one process without a shell.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch

from videogrpo.distributed.world import World, close_world, init_world


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_local(
    size: int,
    function: Callable[..., Any],
    *args: Any,
    backend: str = "gloo",
    threads: int = 1,
) -> None:
    """`function(world, *args)` on `size` local ranks (a module-level function: each rank is a
    fresh interpreter); returns when all are done, raises if one failed."""
    torch.multiprocessing.start_processes(
        _rank_main,
        args=(size, free_port(), backend, threads, function, args),
        nprocs=size,
        start_method="spawn",
    )


def _rank_main(
    rank: int,
    size: int,
    port: int,
    backend: str,
    threads: int,
    function: Callable[..., Any],
    args: tuple,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_WORLD_SIZE=str(size),
    )
    torch.set_num_threads(threads)
    world: World = init_world(backend)
    try:
        function(world, *args)
    finally:
        close_world(world)
