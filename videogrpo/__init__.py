"""videogrpo: GRPO post-training for text-to-video flow-matching generators.

`from videogrpo import train, load_config` is the Python API; both are imported on first use so
that `import videogrpo` (and the CLI's parser) stays free of torch and diffusers.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_config", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from videogrpo.runs.train import train

        return train
    if name == "load_config":
        from videogrpo.config import load_config

        return load_config
    raise AttributeError(f"module 'videogrpo' has no attribute {name!r}")
