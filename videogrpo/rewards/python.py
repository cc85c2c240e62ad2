"""`reward.type: python`: your own function as the reward.

`reward.options.function` names it as `module:function`, the module either importable from
sys.path (`my_package.scores:sharpness`) or a file (`path/to/scores.py:sharpness`). The function
takes the protocol's arguments, videos (B, F, H, W, 3) float in [0, 1] on the CPU and B prompts,
and returns {name: B scores} (a tensor, array or list per name).

The trainer checks weights and curriculum order against the component names before the run, so
they must be known up front: from `reward.options.components`, else from a `components`
attribute of the function, else by calling the function once on a probe clip (PROBE_SHAPE, mid
gray) and reading the names it returns.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from videogrpo.errors import UserError
from videogrpo.rewards.guarded import checked_scores, one_line

# The probe clip: one video of 8 frames of 64×64, mid gray, small enough for any function.
PROBE_SHAPE = (1, 8, 64, 64, 3)
PROBE_PROMPT = "a gray probe video"
FUNCTION_KEY = "reward.options.function"


def _import_module(name: str):
    """A module by dotted name from sys.path, or from a file when the name is a path."""
    if name.endswith(".py") or "/" in name or "\\" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"{FUNCTION_KEY}: file {str(path)!r} not found")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module_name = f"videogrpo_user_reward_{digest}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise UserError(
                f"{FUNCTION_KEY}: importing {path} failed: {one_line(error)}"
            ) from error
        return module
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise UserError(
            f"{FUNCTION_KEY}: cannot import module {name!r} ({one_line(error)}); give a module on "
            "sys.path or a file, e.g. path/to/scores.py:my_reward"
        ) from error


def load_function(spec: str) -> Callable:
    """`module:function` to the function, or a UserError naming the part that is wrong."""
    module_name, separator, attribute = spec.rpartition(":")
    if not separator or not module_name or not attribute:
        raise UserError(
            f"{FUNCTION_KEY}: {spec!r} is not module:function, e.g. my_scores:sharpness"
        )
    module = _import_module(module_name)
    function = getattr(module, attribute, None)
    if function is None:
        raise UserError(f"{FUNCTION_KEY}: {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise UserError(f"{FUNCTION_KEY}: {spec!r} is a {type(function).__name__}, not callable")
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
