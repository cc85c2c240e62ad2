"""KL reference policies (ALGORITHMS §7): the fixed initial model and the periodic moving anchor.

The anchor is a snapshot (detached clones) of the trainable weights, never an alias of the live
model; evaluating it swaps the snapshot in, runs the forward, and swaps the policy back. With LoRA
that moves only the adapter's few tensors; the fixed reference is the adapter switched off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from videogrpo.models.base import VideoGenerator


class MovingAnchor:
    """π_ref ← copy of π_θ every `every` optimizer steps (refreshed between iterations, §9)."""

    def __init__(self, model: VideoGenerator, every: int) -> None:
        self.every = every
        self.weights = model.trainable_state_dict()
        self.refreshed_at = 0

    def maybe_refresh(self, model: VideoGenerator, optimizer_steps: int) -> bool:
        if optimizer_steps - self.refreshed_at < self.every:
            return False
        self.weights = model.trainable_state_dict()
        self.refreshed_at = optimizer_steps
        return True

    @contextmanager
    def active(self, model: VideoGenerator) -> Iterator[None]:
        """Within this context the model computes with the anchor's weights."""
        policy = model.trainable_state_dict()
        model.load_trainable_state_dict(self.weights)
        try:
            yield
        finally:
            model.load_trainable_state_dict(policy)

    def state_dict(self) -> dict[str, object]:
        return {"weights": dict(self.weights), "refreshed_at": self.refreshed_at}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.weights = {name: tensor.clone() for name, tensor in state["weights"].items()}
        self.refreshed_at = int(state["refreshed_at"])


def reference_context(model: VideoGenerator, reference: str, anchor: MovingAnchor | None):
    """The context manager under which `model` is the KL reference named by `reference`."""
    if reference == "fixed":
        return model.reference_policy()
    if reference in ("moving", "dual"):
        assert anchor is not None
        return anchor.active(model)
    raise ValueError(f"reference {reference!r} needs no reference forward")


def needs_reference_means(reference: str) -> bool:
    """Whether the KL term compares against another policy's means at the trained steps."""
    return reference in ("fixed", "moving", "dual")
