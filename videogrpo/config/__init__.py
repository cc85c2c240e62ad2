"""The training configuration: typed sections (`settings`), the machinery that validates them
(`schema`), and YAML loading with `--set` overrides."""

from videogrpo.config.settings import TrainConfig, config_to_yaml, load_config

__all__ = ["TrainConfig", "config_to_yaml", "load_config"]
