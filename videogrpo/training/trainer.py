"""The GRPO loop: rollout → reward → advantages → minibatched update (anchor refresh) → log.

ALGORITHMS §9. The pieces live elsewhere (core/ math, models/, rewards/, rollout, replay, update,
trust_region, and build for the config → objects translation); this file only composes them and
keeps the run's state, so it reads top to bottom like the algorithm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from videogrpo import faults
from videogrpo.config import TrainConfig
from videogrpo.core import advantage
from videogrpo.core.curriculum import CurriculumResult
from videogrpo.distributed.layout import BatchLayout
from videogrpo.distributed.parallel import Parallel
from videogrpo.models.base import VideoGenerator
from videogrpo.rewards.base import RewardModel
from videogrpo.training import build
from videogrpo.training.prompts import PromptOrder
from videogrpo.training.replay import UpdateBatch, keep_extremes
from videogrpo.training.rollout import sample_trajectories, shared_noise_seeds
from videogrpo.training.scoring import decode_and_score
from videogrpo.training.update import policy_update


@dataclass
class IterationResult:
    """What one iteration produced, for logging and for saving rollout videos."""

    metrics: dict[str, float]
    prompts: list[str]
    rewards: dict[str, Tensor]
    advantages: Tensor
    videos: Tensor | None = None  # (K, F, H, W, 3): the first K samples, when asked for


class RewardsFailed(RuntimeError):
    """Not one sample of an iteration could be scored; it is abandoned before any update, with
    the prompt and selection streams rewound so that a resumed run redoes it exactly."""

    def __init__(self, iteration: int, reasons: list[str]) -> None:
        self.iteration, self.reasons = iteration, reasons
        super().__init__(f"iteration {iteration}: no sample could be scored ({'; '.join(reasons)})")


def scorable_samples(rewards: dict[str, Tensor], components: tuple[str, ...]) -> Tensor:
    """(B,) bool: every component the weighting reads is finite."""
    return torch.stack([rewards[name].isfinite() for name in components]).all(dim=0)


@dataclass
class GRPOTrainer:
    """State of one run: the model and optimizer plus every schedule that must survive a resume.

    Under torchrun every rank holds one: all draw the same global batch, each rolls out and
    scores its own samples (`parallel`, `distributed/layout.py`), and all compute the whole
    batch's advantages from the gathered rewards, so every schedule stays the same everywhere.
    """

    config: TrainConfig
    model: VideoGenerator
    reward: RewardModel
    prompts: list[str]
    parallel: Parallel = field(default_factory=Parallel)
    iteration: int = 0
    optimizer_steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        config = self.config
        self.settings = build.step_settings(config)
        self.loss_settings = build.loss_settings(config, self.settings)
        self.selector = build.selector(config, self.settings)
        self.curriculum = build.curriculum(config)
        self.kl = build.kl_reference(config, self.model, self.settings)
        self.optimizer = torch.optim.AdamW(
            self.model.trainable_parameters(),
            lr=config.optim.lr,
            betas=(config.optim.beta1, config.optim.beta2),
            weight_decay=config.optim.weight_decay,
        )
        self.storage = torch.device("cpu") if config.memory.trajectory_device == "cpu" else None
        # Separate streams so that, e.g., changing the selection never changes the prompts.
        self.data_generator = torch.Generator().manual_seed(config.run.seed)
        self.prompt_order = PromptOrder(config.data.order, len(self.prompts), config.run.seed)
        self.selection_generator = torch.Generator().manual_seed(config.run.seed + 1)

    # ------------------------------------------------------------------ one iteration

    def next_prompts(self) -> tuple[list[str], list[int]]:
        """B prompts drawn from the training set, each repeated G times (groups contiguous)."""
        data = self.config.data
        picks = self.prompt_order.draw(data.prompts_per_iteration, self.data_generator)
        prompts = [self.prompts[i] for i in picks for _ in range(data.group_size)]
        seeds = torch.randint(2**31 - 1, (len(prompts),), generator=self.data_generator).tolist()
        return prompts, seeds

    def minibatches(self, num_samples: int) -> list[Tensor]:
        """Fixed contiguous chunks: whole groups per minibatch when they divide evenly."""
        return list(torch.arange(num_samples).chunk(self.config.optim.minibatches))

    def learning_rate(self) -> float:
        warmup = self.config.optim.warmup_iterations
        scale = 1.0 if warmup == 0 else min(1.0, (self.iteration + 1) / warmup)
        return self.config.optim.lr * scale

    def score(self, rewards: dict[str, Tensor]) -> tuple[Tensor, CurriculumResult]:
        """The weighted composite (static or self-paced) of the rewards and its advantages."""
        config = self.config
        group_size = config.data.group_size
        weighted = self.curriculum(rewards, group_size)
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
        return advantages, weighted

    def take_reward_failures(self) -> list[str]:
        """Why reward calls failed since the last look (a RewardSet's guards keep the reasons)."""
        take = getattr(self.reward, "take_failures", None)
        return [failure.reason for failure in take()] if take is not None else []

    def step(self, keep_videos: int = 0) -> IterationResult:
        """One GRPO iteration (ALGORITHMS §9); the first `keep_videos` rollout videos are kept.

        A sample whose weighted reward components are not all finite (its reward call failed)
        gets no advantage and stays out of its group's statistics; when no sample is left,
        RewardsFailed is raised before anything of the run's state has moved.
        """
        config, settings, timings = self.config, self.settings, {}
        world = self.parallel.world
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        streams = (self.data_generator.get_state(), self.selection_generator.get_state())
        self.take_reward_failures()  # eval's failures are not this iteration's

        start = time.perf_counter()
        prompts, seeds = self.next_prompts()
        num_samples = len(prompts)
        selection = self.selector.select(
            settings.num_steps,
            num_samples,
            iteration=self.iteration,
            generator=self.selection_generator,
            stochastic=settings.stochastic,
        )
        trained = torch.zeros(num_samples, settings.num_steps, dtype=torch.bool)
        trained.scatter_(1, selection.trained_steps, True)
        layout = BatchLayout.split(self.minibatches(num_samples), world)
        mine = layout.samples.tolist()
        if config.data.shared_initial_noise:
            initial_seeds = [shared_noise_seeds(seeds, config.data.group_size)[i] for i in mine]
        else:
            initial_seeds = None
        my_prompts = [prompts[i] for i in mine]
        conditioning = self.model.encode(my_prompts, config.sampling.negative_prompt)
        self.model.eval()
        with self.parallel.gathered():
            trajectories = sample_trajectories(
                self.model,
                settings,
                conditioning,
                [seeds[i] for i in mine],
                sde_mask=selection.sde_mask,
                trained=layout.local(trained),
                chunks=layout.chunks,
                keep_means=self.kl.needs_rollout_means,
                initial_seeds=initial_seeds,
                storage_device=self.storage,
            )
        timings["time/rollout"] = time.perf_counter() - start
        faults.reached("after_rollout", self.iteration + 1)

        start = time.perf_counter()
        scored = decode_and_score(
            self.model,
            self.reward,
            trajectories.final,
            my_prompts,
            decode_batch_size=config.memory.decode_batch_size,
            keep_videos=layout.kept(keep_videos),
        )
        gathered = {  # the whole batch's rewards, on every rank
            name: layout.to_global(world.gather_rows(values))
            for name, values in scored.rewards.items()
        }
        failures = self.take_reward_failures()
        if world.size > 1:
            failures = [line for line in world.gather_text("\n".join(failures)).split("\n") if line]
        components = self.curriculum.components
        scorable = scorable_samples(gathered, components)
        if not scorable.any():
            self.data_generator.set_state(streams[0])
            self.selection_generator.set_state(streams[1])
            raise RewardsFailed(self.iteration + 1, list(dict.fromkeys(failures)))
        rewards = {  # a failed sample is left out of every weighted component's statistics
            name: values.where(scorable, float("nan")) if name in components else values
            for name, values in gathered.items()
        }
        advantages, weighted = self.score(rewards)
        timings["time/reward"] = time.perf_counter() - start
        batch = UpdateBatch(
            trajectories,
            conditioning,
            layout.local(advantages),
            layout.local(trained),
            layout.chunks,
        )
        if config.data.train_extremes:
            start = time.perf_counter()
            keep = advantage.extremes_mask(
                advantages, config.data.group_size, config.data.train_extremes
            )
            trained &= keep[:, None]
            with self.parallel.gathered():
                keep_extremes(self.model, settings, batch, layout.local(keep))
            timings["time/old_log_probs"] = time.perf_counter() - start

        start = time.perf_counter()
        self.kl.begin_rollout()
        steps_before = self.optimizer_steps

        def after_step(kl_value: float) -> None:
            self.optimizer_steps += 1
            self.kl.after_optimizer_step(self.model, self.optimizer_steps, kl_value)
            if self.optimizer_steps == steps_before + 1:
                faults.reached("mid_update", self.iteration + 1)

        metrics = policy_update(
            self.model,
            self.optimizer,
            batch,
            settings,
            self.loss_settings,
            self.kl,
            epochs=config.optim.inner_epochs,
            after_step=after_step,
            work=layout.work(trained),
            parallel=self.parallel,
        )
        update_seconds = time.perf_counter() - start
        timings["time/reference"] = self.kl.seconds
        timings["time/update"] = update_seconds - self.kl.seconds
        total_time = sum(timings.values())
        timings["time/samples_per_second"] = num_samples / total_time
        self.iteration += 1

        metrics.update(timings)
        metrics.update(self.reward_metrics(gathered, weighted.composite))
        metrics["reward/failed_samples"] = float((~scorable).sum())
        metrics["reward/failed_fraction"] = float((~scorable).float().mean())
        metrics["reward/failed_calls"] = float(len(failures))
        if config.reward.curriculum != "static":  # fixed weights have nothing to chart
            metrics.update({f"curriculum/{k}": v for k, v in weighted.diagnostics.items()})
        metrics["optim/lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        videos = scored.videos
        if keep_videos and world.size > 1:
            videos = layout.first_in_order(world.gather_optional(videos), keep_videos)
        return IterationResult(metrics, prompts, gathered, advantages, videos)

    def reward_metrics(self, components: dict[str, Tensor], composite: Tensor) -> dict[str, float]:
        group_size = self.config.data.group_size
        metrics = {}
        for name, values in components.items():
            metrics[f"reward/{name}_mean"] = float(values.nanmean())
            metrics[f"reward/{name}_std"] = float(values[values.isfinite()].std(correction=0))
            metrics[f"reward/{name}_group_std"] = advantage.mean_group_std(values, group_size)
        metrics["reward/weighted_mean"] = float(composite.nanmean())
        averaged = self.config.reward.composite_components()
        equal = torch.stack([components[name] for name in averaged]).mean(dim=0)
        metrics["reward/composite_mean"] = float(equal.nanmean())
        metrics["reward/within_group_std"] = advantage.mean_group_std(equal, group_size)
        metrics["reward/zero_std_group_fraction"] = advantage.zero_std_group_fraction(
            composite, group_size, self.config.advantage.eps
        )
        return metrics

    # ------------------------------------------------------------------ resumable state

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "optimizer_steps": self.optimizer_steps,
            "weights": self.model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "curriculum": self.curriculum.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "selection_generator": self.selection_generator.get_state(),
            "prompt_order": self.prompt_order.state_dict(),
            **self.kl.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.model.load_trainable_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.curriculum.load_state_dict(state["curriculum"])
        self.data_generator.set_state(state["data_generator"])
        self.selection_generator.set_state(state["selection_generator"])
        if "prompt_order" in state:  # checkpoints before data.order had only random draws
            self.prompt_order.load_state_dict(state["prompt_order"])
        self.kl.load_state_dict(state)
