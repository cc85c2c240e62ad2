"""Graceful stop: SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C) ends a run cleanly.

While a run trains, the first such signal only raises a flag; the run finishes the iteration in
progress, writes a checkpoint and stops with a message saying how to resume. The handlers are
put back at once, so a second signal acts as it normally would (SIGINT interrupts, SIGTERM
terminates) for whoever cannot wait; the checkpoint protocol makes that safe too.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Shell convention for a process ended by signal N.
SIGNAL_EXIT_BASE = 128


class GracefulStop:
    """Context manager: `received` is the first stop signal that arrived inside, or None."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> GracefulStop:
        # Python delivers signals to the main thread only; elsewhere (a notebook's worker
        # thread) the process keeps its own handling.
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._restore()

    @property
    def exit_code(self) -> int:
        assert self.received is not None
        return SIGNAL_EXIT_BASE + int(self.received)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(number)
        self._restore()
        logger.warning(
            "%s received: stopping after the current iteration, with a checkpoint (send it again "
            "to stop at once)",
            self.received.name,
        )

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}
