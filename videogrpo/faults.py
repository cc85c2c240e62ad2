"""Fault injection for the crash tests: die (or stop) at a named point of a run, on purpose.

`VIDEOGRPO_FAULT=POINT:ITERATION[:ACTION]` makes the process signal itself when it reaches POINT
in ITERATION, so a test can kill a run in a subprocess at an exact instant and then resume it.
Unset (every normal run), `reached` is one dictionary lookup and does nothing. Actions:
`kill` (SIGKILL, the default: no handler, no cleanup, like a pre-empted job), `term` (SIGTERM:
the graceful stop), `stop` (SIGSTOP: the process freezes, still holding its run's lock).

Points, in the order a run meets them (ITERATION is the one in progress; 0 is the first eval):
- `eval_before`: the first held-out eval ran, its line is in eval.jsonl, no checkpoint yet;
- `after_rollout`: the iteration's rollout is sampled, nothing scored or updated;
- `mid_update`: the iteration's first optimizer step is taken, its metrics not yet written;
- `checkpoint_write`: `checkpoint.tmp/` holds the state but no manifest yet;
- `checkpoint_swap`: `checkpoint/` was moved to `checkpoint.old/`, `checkpoint.tmp/` not yet in
  its place (the instant that used to lose runs);
- `checkpoint_cleanup`: the new `checkpoint/` is in place, `checkpoint.old/` not yet removed;
- `final_writes`: the final eval and the trained weights are written, summary.json is not.
"""

from __future__ import annotations

import os
import signal

from videogrpo.errors import UserError

ENVIRONMENT_VARIABLE = "VIDEOGRPO_FAULT"
POINTS = (
    "eval_before",
    "after_rollout",
    "mid_update",
    "checkpoint_write",
    "checkpoint_swap",
    "checkpoint_cleanup",
    "final_writes",
)
ACTIONS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP}


def planned() -> tuple[str, int, signal.Signals] | None:
    """The fault the environment asks for, or None; a malformed request is a UserError."""
    spec = os.environ.get(ENVIRONMENT_VARIABLE)
    if not spec:
        return None
    parts = spec.split(":")
    usage = f"{ENVIRONMENT_VARIABLE}={spec!r}: expected POINT:ITERATION[:ACTION]"
    if len(parts) not in (2, 3) or parts[0] not in POINTS or not parts[1].isdigit():
        raise UserError(f"{usage}, POINT one of {', '.join(POINTS)}")
    action = parts[2] if len(parts) == 3 else "kill"
    if action not in ACTIONS:
        raise UserError(f"{usage}, ACTION one of {', '.join(ACTIONS)}")
    return parts[0], int(parts[1]), ACTIONS[action]


def reached(point: str, iteration: int) -> None:
    """Signal this process if the environment planned a fault at `point` of `iteration`."""
    if ENVIRONMENT_VARIABLE not in os.environ:
        return
    fault = planned()
    if fault is not None and fault[:2] == (point, iteration):
        os.kill(os.getpid(), fault[2])
