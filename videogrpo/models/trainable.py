"""What trains in a diffusers-transformer backbone, written once for every adapter.

A backbone subclasses `TrainableTransformer`, sets `self.transformer` (the denoiser) and
`lora_pipeline_class` (the diffusers pipeline whose `load_lora_weights` should read the exported
adapter), and gets the protocol's training half: LoRA or full fine-tuning, the fixed reference,
clone-safe state dicts and the LoRA export.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from videogrpo.models.lora import (
    WAN_LORA_TARGET_MODULES,
    adapters_disabled,
    add_lora,
    has_lora,
    save_lora_for_pipeline,
)


class TrainableTransformer(nn.Module):
    """LoRA or full fine-tuning of `self.transformer`; everything else stays frozen."""

    lora_pipeline_class: ClassVar[type]
    default_lora_targets: ClassVar[tuple[str, ...]] = WAN_LORA_TARGET_MODULES
    transformer: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._prompt_cache: dict[str, Tensor] = {}
        self._reference_weights: dict[str, Tensor] | None = None
        self._reference_active = False

    def clear_prompt_cache(self) -> None:
        """Call after changing text-encoder weights by hand (loading, editing) while frozen."""
        self._prompt_cache.clear()

    def enable_lora(
        self,
        rank: int,
        alpha: float,
        target_modules: list[str] | None = None,
        dropout: float = 0.0,
    ) -> None:
        self._require_no_training_mode_yet()
        self.requires_grad_(False)
        targets = target_modules or self.default_lora_targets
        add_lora(self.transformer, rank, alpha, targets, dropout)

    def enable_full_finetuning(self) -> None:
        """Train the transformer, keep its current weights as the reference; text stays frozen."""
        self._require_no_training_mode_yet()
        self.requires_grad_(False)
        self.transformer.requires_grad_(True)
        self._reference_weights = {
            name: param.detach().clone() for name, param in self.transformer.named_parameters()
        }

    def _require_no_training_mode_yet(self) -> None:
        if has_lora(self.transformer) or self._reference_weights is not None:
            raise ValueError("enable_lora / enable_full_finetuning may be called once per model")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if param.requires_grad]

    @contextmanager
    def reference_policy(self) -> Iterator[None]:
        """The fixed KL reference: LoRA disabled, or the weights kept by enable_full_finetuning.

        Full fine-tuning swaps tensor storage in and out (no copy); without either mode the
        model is its own reference.
        """
        if has_lora(self.transformer):
            with adapters_disabled(self.transformer):
                yield
        elif self._reference_weights is not None and not self._reference_active:
            self._swap_reference_weights()
            self._reference_active = True
            try:
                yield
            finally:
                self._swap_reference_weights()
                self._reference_active = False
        else:
            yield

    def _swap_reference_weights(self) -> None:
        assert self._reference_weights is not None
        for name, param in self.transformer.named_parameters():
            current = param.data
            param.data = self._reference_weights[name]
            self._reference_weights[name] = current

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return {
            name: param.detach().clone()
            for name, param in self.named_parameters()
            if param.requires_grad
        }

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        trainable = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if state.keys() != trainable.keys():
            missing = sorted(trainable.keys() - state.keys())[:3]
            unexpected = sorted(state.keys() - trainable.keys())[:3]
            raise ValueError(
                f"trainable state does not match the model: missing {missing}, "
                f"unexpected {unexpected}"
            )
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(state[name])
        if any(not name.startswith("transformer.") for name in trainable):
            self.clear_prompt_cache()  # a text encoder changed: cached prompts are stale

    def save_lora(self, directory: str | Path) -> None:
        if not has_lora(self.transformer):
            raise ValueError("save_lora needs a LoRA: call enable_lora first")
        save_lora_for_pipeline(self.transformer, self.lora_pipeline_class, Path(directory))
