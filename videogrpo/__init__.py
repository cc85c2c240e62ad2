"""videogrpo: GRPO post-training for text-to-video flow-matching generators."""

__version__ = "0.1.0"
