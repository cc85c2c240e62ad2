"""The GRPO loop: anchor refresh → rollout → reward → advantages → minibatched update → log.

ALGORITHMS §9. The pieces live elsewhere (core/ math, models/, rewards/, rollout, update); this
file only composes them and keeps the run's state, so it reads top to bottom like the algorithm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from videogrpo.config import TrainConfig
from videogrpo.core import advantage, equalizer, schedule, sde
from videogrpo.core.curriculum import RewardCurriculum, build_curriculum
from videogrpo.core.kl import KLSchedule, make_kl_schedule
from videogrpo.core.selection import StepSelector, make_selection
from videogrpo.errors import UserError
from videogrpo.models.base import PromptEmbeddings, VideoGenerator
from videogrpo.rewards.base import RewardModel
from videogrpo.training.references import MovingAnchor, needs_reference_means, reference_context
from videogrpo.training.rollout import Trajectories, sample_trajectories
from videogrpo.training.update import UpdateBatch, UpdateSettings, policy_update


@dataclass
class IterationResult:
    """What one iteration produced, for logging and for saving rollout videos."""

    metrics: dict[str, float]
    prompts: list[str]
    videos: Tensor  # (N, F, H, W, 3)
    rewards: dict[str, Tensor]
    advantages: Tensor


def kl_schedule_from_config(config: TrainConfig) -> KLSchedule:
    kl = config.kl
    if kl.schedule == "constant":
        return make_kl_schedule("constant", value=kl.coef)
    if kl.schedule == "two_stage":
        return make_kl_schedule(
            "two_stage", first=kl.coef_start, second=kl.coef, switch_at=kl.switch_steps
        )
    if kl.schedule == "linear_ramp":
        return make_kl_schedule(
            "linear_ramp", start=kl.coef_start, end=kl.coef, ramp_steps=kl.switch_steps
        )
    return make_kl_schedule(
        "adaptive",
        lambda_min=kl.coef_start,
        lambda_max=kl.coef_max,
        target=kl.target,
        ramp_steps=kl.switch_steps,
        window=kl.window,
    )


def selector_from_config(config: TrainConfig) -> StepSelector:
    sel = config.selection
    last = config.sampling.deterministic_last_step
    if sel.strategy == "all":
        return make_selection("all", deterministic_last_step=last)
    if sel.strategy in ("first_k", "random_fraction"):
        return make_selection(sel.strategy, deterministic_last_step=last, fraction=sel.fraction)
    return make_selection(
        "window",
        deterministic_last_step=last,
        size=sel.window_size,
        stride=sel.window_stride,
        shift_every=sel.window_every,
    )


def curriculum_from_config(config: TrainConfig) -> RewardCurriculum:
    """The weighting of reward components; `static` is the plain weighted composite."""
    reward = config.reward
    static = reward.curriculum == "static"
    try:
        return build_curriculum(
            reward.curriculum,
            list(reward.weights) if static else reward.order,
            static_weights=reward.weights if static else None,
            normalize_weights=False,
            thresholds=reward.thresholds,
            temperature=reward.temperature,
            sharpness=reward.sharpness,
            beta=reward.beta,
            competence=reward.competence,
            ema_decay=reward.ema_decay,
            normalization="none" if static else reward.normalization,
            lo=reward.lo,
            hi=reward.hi,
            calibration_steps=reward.calibration_iterations,
        )
    except UserError as error:  # the curriculum's messages name its arguments, not the keys
        raise UserError(f"reward ({reward.curriculum} curriculum): {error}") from error


@dataclass
class GRPOTrainer:
    """State of one run: the model and optimizer plus every schedule that must survive a resume."""

    config: TrainConfig
    model: VideoGenerator
    reward: RewardModel
    prompts: list[str]
    iteration: int = 0
    optimizer_steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        config = self.config
        sampling = config.sampling
        self.sigmas = schedule.sigmas(sampling.num_steps, sampling.shift)
        try:  # a schedule the rule cannot step (e.g. sage with σ₁ ≥ 1 − clamp) fails here
            self.stochastic = sde.stochastic_steps(
                sampling.rule, self.sigmas, sampling.eta, sampling.sigma_clamp
            )
        except ValueError as error:
            raise UserError(
                f"sampling (rule {sampling.rule!r}, num_steps {sampling.num_steps}, shift "
                f"{sampling.shift}): {error}"
            ) from error
        step_weights = (
            equalizer.factors(sampling.rule, self.sigmas, sampling.eta, sampling.sigma_clamp)
            if config.policy.equalizer
            else torch.ones(sampling.num_steps)
        )
        self.settings = UpdateSettings(
            rule=sampling.rule,
            eta=sampling.eta,
            sigmas=self.sigmas,
            step_variances=sde.variance(
                sampling.rule, self.sigmas[:-1], self.sigmas[1:], sampling.eta, sampling.sigma_clamp
            ).float(),
            step_weights=step_weights,
            guidance_scale=sampling.guidance_scale,
            sigma_clamp=sampling.sigma_clamp,
            log_prob_reduction=config.policy.log_prob_reduction,
            clip_range=config.policy.clip_range,
            grad_clip=config.optim.grad_clip,
            kl_reference=config.kl.reference,
            beta_pos=config.kl.beta_pos,
            beta_vel=config.kl.beta_vel,
            stepwise_estimator=config.kl.stepwise_estimator,
        )
        self.selector = selector_from_config(config)
        try:  # settings valid one by one may be impossible together: fail before the run starts
            self.selector.select(
                sampling.num_steps, 1, generator=torch.Generator(), stochastic=self.stochastic
            )
        except ValueError as error:
            raise UserError(
                f"selection.strategy {config.selection.strategy!r} with sampling.num_steps = "
                f"{sampling.num_steps}: {error}"
            ) from error
        self.kl_schedule = kl_schedule_from_config(config)
        self.curriculum = curriculum_from_config(config)
        self.optimizer = torch.optim.AdamW(
            self.model.trainable_parameters(),
            lr=config.optim.lr,
            betas=(config.optim.beta1, config.optim.beta2),
            weight_decay=config.optim.weight_decay,
        )
        self.anchor = (
            MovingAnchor(self.model, config.kl.anchor_every)
            if config.kl.reference in ("moving", "dual")
            else None
        )
        # Separate streams so that, e.g., changing the selection never changes the prompts.
        self.data_generator = torch.Generator().manual_seed(config.run.seed)
        self.selection_generator = torch.Generator().manual_seed(config.run.seed + 1)

    # ------------------------------------------------------------------ one iteration

    def next_prompts(self) -> tuple[list[str], list[int]]:
        """B prompts drawn from the training set, each repeated G times (groups contiguous)."""
        data = self.config.data
        picks = torch.randint(
            len(self.prompts), (data.prompts_per_iteration,), generator=self.data_generator
        )
        prompts = [self.prompts[i] for i in picks.tolist() for _ in range(data.group_size)]
        seeds = torch.randint(2**31 - 1, (len(prompts),), generator=self.data_generator).tolist()
        return prompts, seeds

    def minibatches(self, num_samples: int) -> list[Tensor]:
        """Fixed contiguous chunks: whole groups per minibatch when they divide evenly."""
        return list(torch.arange(num_samples).chunk(self.config.optim.minibatches))

    def learning_rate(self) -> float:
        warmup = self.config.optim.warmup_iterations
        scale = 1.0 if warmup == 0 else min(1.0, (self.iteration + 1) / warmup)
        return self.config.optim.lr * scale

    @torch.no_grad()
    def replay(
        self,
        trajectories: Trajectories,
        embeddings: PromptEmbeddings,
        trained: Tensor,
        chunks: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """μ and log π of the model as it is now at every trained (step, sample), batched
        exactly as the update will replay them; NaN elsewhere."""
        settings = self.settings
        means = torch.full_like(trajectories.states[1:], float("nan"))
        log_probs = torch.full_like(trajectories.log_probs, float("nan"))
        for k in range(settings.sigmas.numel() - 1):
            sigma, sigma_next = settings.sigmas[k].item(), settings.sigmas[k + 1].item()
            for chunk in chunks:
                rows = chunk[trained[chunk, k]]
                if rows.numel() == 0:
                    continue
                x = trajectories.states[k, rows]
                velocity = self.model.velocity(
                    x,
                    torch.full((rows.numel(),), sigma, device=x.device),
                    embeddings.select(rows),
                    settings.guidance_scale,
                )
                out = sde.step(
                    settings.rule,
                    velocity,
                    x,
                    sigma,
                    sigma_next,
                    eta=settings.eta,
                    prev_sample=trajectories.states[k + 1, rows],
                    sigma_clamp=settings.sigma_clamp,
                    log_prob_reduction=settings.log_prob_reduction,
                )
                means[k, rows], log_probs[k, rows] = out.mean, out.log_prob
        return means, log_probs

    def reference_means(
        self,
        trajectories: Trajectories,
        embeddings: PromptEmbeddings,
        trained: Tensor,
        chunks: list[Tensor],
    ) -> Tensor | None:
        """μ_ref at every trained (step, sample), batched exactly as the update will replay."""
        if not needs_reference_means(self.config.kl.reference):
            return None
        with reference_context(self.model, self.config.kl.reference, self.anchor):
            return self.replay(trajectories, embeddings, trained, chunks)[0]

    def keep_extremes(
        self,
        trajectories: Trajectories,
        embeddings: PromptEmbeddings,
        advantages: Tensor,
        trained: Tensor,
        chunks: list[Tensor],
    ) -> Tensor:
        """Train only each group's best and worst samples (data.train_extremes), and recompute
        their log π_old in the update's smaller batches so the first replay is exactly ratio 1."""
        keep = advantage.extremes_mask(
            advantages, self.config.data.group_size, self.config.data.train_extremes
        )
        trained = trained & keep[:, None]
        means, log_probs = self.replay(trajectories, embeddings, trained, chunks)
        steps = trained.T
        trajectories.log_probs[steps] = log_probs[steps]
        if trajectories.means is not None:
            trajectories.means[steps] = means[steps]
        return trained

    def score(self, videos: Tensor, prompts: list[str]) -> tuple[dict[str, Tensor], Tensor, dict]:
        """Reward components, the weighted composite (static or self-paced) and advantages."""
        config = self.config
        components = {k: v.float() for k, v in self.reward(videos, prompts).items()}
        group_size = config.data.group_size
        weighted = self.curriculum(components, group_size)
        if config.reward.aggregation == "normalize_then_sum":  # static or per-group weights
            advantages = advantage.weighted_group_advantages(
                weighted.normalized,
                weighted.weights,
                group_size,
                std_mode=config.advantage.std,
                eps=config.advantage.eps,
                clip=config.advantage.clip,
            )
        else:
            advantages = advantage.group_advantages(
                weighted.composite,
                group_size,
                std_mode=config.advantage.std,
                eps=config.advantage.eps,
                clip=config.advantage.clip,
            )
        return components, advantages, weighted

    def step(self) -> IterationResult:
        """One GRPO iteration (ALGORITHMS §9)."""
        config, timings = self.config, {}
        if self.anchor is not None:
            self.anchor.maybe_refresh(self.model, self.optimizer_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()

        start = time.perf_counter()
        prompts, seeds = self.next_prompts()
        num_samples = len(prompts)
        selection = self.selector.select(
            config.sampling.num_steps,
            num_samples,
            iteration=self.iteration,
            generator=self.selection_generator,
            stochastic=self.stochastic,
        )
        trained = torch.zeros(num_samples, config.sampling.num_steps, dtype=torch.bool)
        trained.scatter_(1, selection.trained_steps, True)
        chunks = self.minibatches(num_samples)
        embeddings = self.model.encode_prompts(prompts)
        self.model.eval()
        trajectories = sample_trajectories(
            self.model,
            prompts,
            seeds,
            self.sigmas,
            rule=config.sampling.rule,
            eta=config.sampling.eta,
            sde_mask=selection.sde_mask,
            guidance_scale=config.sampling.guidance_scale,
            trained=trained,
            chunks=chunks,
            sigma_clamp=config.sampling.sigma_clamp,
            log_prob_reduction=config.policy.log_prob_reduction,
            embeddings=embeddings,
            keep_means=config.kl.stepwise_estimator == "analytic"
            and config.kl.reference in ("stepwise", "dual"),
            noise_group_size=config.data.noise_group_size,
        )
        timings["time/rollout"] = time.perf_counter() - start

        start = time.perf_counter()
        videos = self.model.decode(trajectories.final)
        components, advantages, weighted = self.score(videos, prompts)
        timings["time/reward"] = time.perf_counter() - start
        if config.data.train_extremes:
            start = time.perf_counter()
            trained = self.keep_extremes(trajectories, embeddings, advantages, trained, chunks)
            timings["time/old_log_probs"] = time.perf_counter() - start

        start = time.perf_counter()
        reference_means = self.reference_means(trajectories, embeddings, trained, chunks)
        timings["time/reference"] = time.perf_counter() - start

        start = time.perf_counter()
        batch = UpdateBatch(trajectories, embeddings, advantages, trained, chunks, reference_means)

        def after_step(kl_value: float) -> None:
            self.optimizer_steps += 1
            self.kl_schedule.update(kl_value)

        metrics = policy_update(
            self.model,
            self.optimizer,
            batch,
            self.settings,
            epochs=config.optim.inner_epochs,
            kl_coef=self.kl_schedule.value,
            after_step=after_step,
        )
        timings["time/update"] = time.perf_counter() - start
        total_time = sum(timings.values())
        timings["time/samples_per_second"] = num_samples / total_time
        self.iteration += 1

        metrics.update(timings)
        metrics.update(self.reward_metrics(components, weighted.composite))
        if config.reward.curriculum != "static":  # fixed weights have nothing to chart
            metrics.update({f"curriculum/{k}": v for k, v in weighted.diagnostics.items()})
        metrics["optim/lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        return IterationResult(metrics, prompts, videos, components, advantages)

    def reward_metrics(self, components: dict[str, Tensor], composite: Tensor) -> dict[str, float]:
        group_size = self.config.data.group_size
        metrics = {}
        for name, values in components.items():
            metrics[f"reward/{name}_mean"] = float(values.nanmean())
            metrics[f"reward/{name}_std"] = float(values[values.isfinite()].std(correction=0))
            metrics[f"reward/{name}_group_std"] = advantage.mean_group_std(values, group_size)
        metrics["reward/weighted_mean"] = float(composite.nanmean())
        equal = torch.stack(list(components.values())).mean(dim=0)
        metrics["reward/composite_mean"] = float(equal.nanmean())
        metrics["reward/within_group_std"] = advantage.mean_group_std(equal, group_size)
        metrics["reward/zero_std_group_fraction"] = advantage.zero_std_group_fraction(
            composite, group_size, self.config.advantage.eps
        )
        return metrics

    # ------------------------------------------------------------------ resumable state

    def state_dict(self) -> dict:
        state = {
            "iteration": self.iteration,
            "optimizer_steps": self.optimizer_steps,
            "weights": self.model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "kl_schedule": self.kl_schedule.state_dict(),
            "curriculum": self.curriculum.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "selection_generator": self.selection_generator.get_state(),
        }
        if self.anchor is not None:
            state["anchor"] = self.anchor.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.model.load_trainable_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_schedule.load_state_dict(state["kl_schedule"])
        self.curriculum.load_state_dict(state["curriculum"])
        self.data_generator.set_state(state["data_generator"])
        self.selection_generator.set_state(state["selection_generator"])
        if self.anchor is not None:
            self.anchor.load_state_dict(state["anchor"])
