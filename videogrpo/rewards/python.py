"""`reward.type: python`: your own function as the reward.

`reward.options.function` names it as `module:function`, the module importable from sys.path
(`my_package.scores:sharpness`) or a file (`path/to/scores.py:sharpness`), found as any plugin is
(videogrpo/registry.py). The function takes the protocol's arguments, videos (B, F, H, W, 3)
float in [0, 1] on the CPU and B prompts, and returns {name: B scores} (a tensor, array or list
per name).

The trainer checks weights and curriculum order against the component names before the run, so
they must be known up front: from `reward.options.components`, else from a `components`
attribute of the function, else by calling the function once on a probe clip (PROBE_SHAPE, mid
gray) and reading the names it returns.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from videogrpo.errors import UserError
from videogrpo.registry import import_object
from videogrpo.rewards.guarded import checked_scores, one_line

# The probe clip: one video of 8 frames of 64×64, mid gray, small enough for any function.
PROBE_SHAPE = (1, 8, 64, 64, 3)
PROBE_PROMPT = "a gray probe video"
FUNCTION_KEY = "reward.options.function"


def load_function(spec: str) -> Callable:
    """`module:function` (or `file.py:function`) to the function, or a one-line UserError."""
    function = import_object(spec, FUNCTION_KEY)
    if not callable(function):
        raise UserError(f"{FUNCTION_KEY} {spec!r}: a {type(function).__name__}, not callable")
    return function


def _probe_components(function: Callable, spec: str) -> tuple[str, ...]:
    try:
        scores = function(torch.full(PROBE_SHAPE, 0.5), [PROBE_PROMPT])
        if not isinstance(scores, dict) or not scores:
            raise ValueError(f"it returned {type(scores).__name__}, not a dict of scores")
        names = tuple(str(name) for name in scores)
        checked_scores(scores, names, PROBE_SHAPE[0])
    except Exception as error:
        raise UserError(
            f"reward: calling {spec} on a probe clip {PROBE_SHAPE} to learn its component names "
            f"failed ({one_line(error)}); declare them: reward.options.components=[name, ...]"
        ) from error
    return names


class PythonReward:
    """Scores with a user function; its answers are checked like any reward's."""

    def __init__(self, function: str, components: list[str] | None = None) -> None:
        self.function = load_function(function)
        declared = (
            components if components is not None else getattr(self.function, "components", None)
        )
        if declared is None:
            self.components = _probe_components(self.function, function)
        elif isinstance(declared, str) or not declared:
            raise UserError(
                f"reward: components of {function} must be a non-empty list of names, "
                f"got {declared!r}"
            )
        else:
            self.components = tuple(str(name) for name in declared)

    def __call__(self, videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        return checked_scores(self.function(videos, prompts), self.components, len(prompts))
