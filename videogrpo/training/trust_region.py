"""The KL side of the loss as one object: which policy it compares to, its terms and λ_t (§7).

Reference kinds: `none`; `fixed` (the initial model: LoRA off, or the weights kept at
`enable_full_finetuning`); `moving` (a periodic anchor, a snapshot of the policy every N optimizer
steps); `stepwise` (the rollout's own policy, from its log-probs or stored means); `dual` (SAGE:
β_pos·moving + β_vel·stepwise). The anchor is a snapshot (detached clones) of the trainable
weights, never an alias of the live model; evaluating it swaps the snapshot in, runs the forward,
and swaps the policy back — with LoRA only the adapter's few tensors move.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor

from videogrpo.core import kl as kl_terms
from videogrpo.core.kl import KLSchedule
from videogrpo.distributed.parallel import ONE_PROCESS, Parallel
from videogrpo.models.base import VideoGenerator
from videogrpo.training.replay import UpdateBatch, replay
from videogrpo.training.rollout import Trajectories
from videogrpo.training.step import StepSettings

REFERENCE_KINDS = ("none", "fixed", "moving", "stepwise", "dual")
# When λ_t moves: once per trained (sample, step) pair, with that pair's KL (official SAGE calls
# its controller at every inner iteration), or once per optimizer step with the step's mean KL.
CLOCKS = ("sample_step", "optimizer_step")


class MovingAnchor:
    """π_ref ← copy of π_θ every `every` optimizer steps (checked after each step)."""

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


class KLReference:
    """Everything the update needs to add λ_t·KL: reference means, per-step terms, λ_t.

    `variances` (T,) are the per-step denominators of the Gaussian KL (the step variances Σ_k,
    or FlowGRPO's std_dev_t²) and `eps` the floor added to them (SAGE: 1e-6; FlowGRPO: none).
    """

    def __init__(
        self,
        kind: str,
        model: VideoGenerator,
        schedule: KLSchedule,
        variances: Tensor,
        *,
        anchor_every: int = 10,
        beta_pos: float = kl_terms.DEFAULT_BETA_POSITION,
        beta_vel: float = kl_terms.DEFAULT_BETA_VELOCITY,
        stepwise_estimator: str = "k1",
        eps: float = kl_terms.KL_VARIANCE_EPS,
        clock: str = "optimizer_step",
    ) -> None:
        if kind not in REFERENCE_KINDS:
            raise ValueError(f"unknown KL reference {kind!r}; allowed: {list(REFERENCE_KINDS)}")
        self.kind = kind
        self.schedule = schedule
        self.variances = variances
        self.beta_pos, self.beta_vel = beta_pos, beta_vel
        self.stepwise_estimator = stepwise_estimator
        self.eps = eps
        if clock not in CLOCKS:
            raise ValueError(f"unknown KL controller clock {clock!r}; allowed: {list(CLOCKS)}")
        self.clock = clock
        self.anchor = MovingAnchor(model, anchor_every) if kind in ("moving", "dual") else None
        self.seconds = 0.0  # time spent in reference forwards, for the time/reference metric
        self._means: Tensor | None = None
        self._fresh_chunks: set[int] = set()

    # ---------------------------------------------------------------- what the kind needs

    @property
    def compares_to_reference(self) -> bool:
        """Whether a term compares to another policy's means at the trained steps."""
        return self.kind in ("fixed", "moving", "dual")

    @property
    def compares_to_rollout(self) -> bool:
        return self.kind in ("stepwise", "dual")

    @property
    def needs_rollout_means(self) -> bool:
        """The analytic step-wise term compares to μ_old, stored by the rollout."""
        return self.compares_to_rollout and self.stepwise_estimator == "analytic"

    def reference_context(self, model: VideoGenerator) -> AbstractContextManager[None]:
        """The context under which `model` computes as the reference policy."""
        if self.kind == "fixed":
            return model.reference_policy()
        if self.anchor is not None:
            return self.anchor.active(model)
        raise ValueError(f"KL reference {self.kind!r} has no reference forward")

    # ---------------------------------------------------------------- anchor and λ

    def coefficient(self) -> float:
        """λ_t for the coming optimizer step (per-pair λ are `coefficients_for`'s)."""
        return self.schedule.value()

    def coefficients_for(self, values: Tensor) -> Tensor:
        """`sample_step` clock: λ for each (sample, step) pair's KL in `values`, in order — the
        value before that pair's own controller update, as official SAGE reads λ before it
        calls update(kl) at every inner iteration."""
        lambdas = []
        for value in values.tolist():
            lambdas.append(self.schedule.value())
            self.schedule.update(value)
        return torch.tensor(lambdas, dtype=values.dtype, device=values.device)

    def after_optimizer_step(
        self, model: VideoGenerator, optimizer_steps: int, step_kl: float
    ) -> None:
        """Right after optimizer step N, 2N, …: the anchor becomes a copy of the policy, and
        reference means computed against the old anchor are recomputed before their next use
        (so the period is N whatever the minibatches × epochs per rollout)."""
        if self.clock == "optimizer_step":
            self.schedule.update(step_kl)
        if self.anchor is not None and self.anchor.maybe_refresh(model, optimizer_steps):
            self._fresh_chunks.clear()

    # ---------------------------------------------------------------- reference means

    def begin_rollout(self) -> None:
        """A new rollout: reference means are computed again, lazily, per minibatch."""
        self._means = None
        self._fresh_chunks.clear()
        self.seconds = 0.0

    @torch.no_grad()
    def reference_means(
        self,
        model: VideoGenerator,
        settings: StepSettings,
        batch: UpdateBatch,
        chunk_index: int,
        parallel: Parallel = ONE_PROCESS,
    ) -> Tensor | None:
        """μ_ref at every trained (step, sample) of chunk `chunk_index`, computed in the update's
        batches the first time the chunk is trained under the current reference (gathered after
        the reference is in place, under FSDP2)."""
        if not self.compares_to_reference:
            return None
        if chunk_index not in self._fresh_chunks:
            started = time.perf_counter()
            was_training = model.training
            model.eval()
            chunk = batch.chunks[chunk_index]
            with self.reference_context(model), parallel.gathered():
                means, _ = replay(model, settings, batch, with_means=True, chunks=[chunk])
            model.train(was_training)
            if self._means is None:
                self._means = means
            else:
                rows = chunk
                self._means[:, rows] = means[:, rows]
            self._fresh_chunks.add(chunk_index)
            self.seconds += time.perf_counter() - started
        return self._means

    # ---------------------------------------------------------------- terms

    def terms(
        self,
        k: int,
        rows: Tensor,
        mean: Tensor,
        log_prob: Tensor,
        trajectories: Trajectories,
        reference_means: Tensor | None,
    ) -> dict[str, Tensor]:
        """Per-sample KL terms (n,) for the rows that train step k: `pos` to the reference,
        `vel` to the rollout policy."""
        terms: dict[str, Tensor] = {}
        variance = self.variances[k]
        if self.compares_to_reference:
            assert reference_means is not None
            reference = reference_means[k, rows].to(mean.device)
            terms["pos"] = kl_terms.gaussian_kl(mean, reference, variance, self.eps)
        if self.compares_to_rollout:
            if self.needs_rollout_means:
                assert trajectories.means is not None
                old_mean = trajectories.means[k, rows].to(mean.device)
                terms["vel"] = kl_terms.gaussian_kl(mean, old_mean, variance, self.eps)
            else:
                old = trajectories.log_probs[k, rows].to(log_prob.device)
                terms["vel"] = kl_terms.k1_kl(log_prob, old)
        return terms

    def combine(self, terms: dict[str, Tensor]) -> Tensor | None:
        """The KL of the loss from the terms (batch means or per-sample; None without a KL)."""
        if self.kind == "dual":
            return kl_terms.dual_kl(terms["pos"], terms["vel"], self.beta_pos, self.beta_vel)
        if "pos" in terms:
            return terms["pos"]
        return terms.get("vel")

    # ---------------------------------------------------------------- resumable state

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {"kl_schedule": self.schedule.state_dict()}
        if self.anchor is not None:
            state["anchor"] = self.anchor.state_dict()
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.schedule.load_state_dict(state["kl_schedule"])
        if self.anchor is not None:
            self.anchor.load_state_dict(state["anchor"])
