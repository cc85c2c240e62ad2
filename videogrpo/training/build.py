"""The config's settings turned, once per run, into the objects the loop uses.

Every translation from a config key to a core argument lives here, so the trainer never reads a
setting it has to reinterpret, and rollout, replay and update share the same settings objects.
"""

from __future__ import annotations

import torch

from videogrpo.config import TrainConfig
from videogrpo.core import equalizer, schedule
from videogrpo.core.curriculum import RewardCurriculum, build_curriculum
from videogrpo.core.kl import KL_VARIANCE_EPS, KLSchedule, flowgrpo_variance, make_kl_schedule
from videogrpo.core.selection import StepSelector, make_selection
from videogrpo.errors import UserError
from videogrpo.models.base import VideoGenerator
from videogrpo.training.step import StepSettings
from videogrpo.training.trust_region import KLReference
from videogrpo.training.update import LossSettings


def step_settings(config: TrainConfig) -> StepSettings:
    """The rollout's step settings; a schedule the rule cannot step fails here, before the run."""
    sampling = config.sampling
    try:  # e.g. a shift so large that σ₁ rounds to 1, or sage with σ₁ ≥ 1 − clamp
        settings = StepSettings(
            rule=sampling.rule,
            eta=sampling.eta,
            sigmas=schedule.sigmas(sampling.num_steps, sampling.shift),
            guidance_scale=sampling.guidance_scale,
            sigma_clamp=sampling.sigma_clamp,
            log_prob_reduction=config.policy.log_prob_reduction,
            micro_batch_size=config.memory.micro_batch_size,
        )
        settings.variances  # noqa: B018 (computed and cached here, on purpose)
    except ValueError as error:
        raise UserError(
            f"sampling (rule {sampling.rule!r}, num_steps {sampling.num_steps}, shift "
            f"{sampling.shift}): {error}"
        ) from error
    return settings


def eval_step_settings(
    num_steps: int, shift: float, guidance_scale: float, rule: str = "ode", eta: float = 0.0
) -> StepSettings:
    return StepSettings(rule, eta, schedule.sigmas(num_steps, shift), guidance_scale)


def loss_settings(config: TrainConfig, settings: StepSettings) -> LossSettings:
    sampling = config.sampling
    weights = (
        equalizer.factors(sampling.rule, settings.sigmas, sampling.eta, sampling.sigma_clamp)
        if config.policy.equalizer
        else torch.ones(sampling.num_steps)
    )
    return LossSettings(weights, config.policy.clip_range, config.optim.grad_clip)


def kl_schedule(config: TrainConfig) -> KLSchedule:
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


def kl_reference(config: TrainConfig, model: VideoGenerator, settings: StepSettings) -> KLReference:
    """The KL term with the normaliser of the preset's reference implementation (§7)."""
    kl = config.kl
    if kl.normalizer == "flowgrpo":
        variances, eps = flowgrpo_variance(settings.sigmas, settings.eta).float(), 0.0
    else:
        variances, eps = settings.variances.float(), KL_VARIANCE_EPS
    return KLReference(
        kl.reference,
        model,
        kl_schedule(config),
        variances,
        anchor_every=kl.anchor_every,
        beta_pos=kl.beta_pos,
        beta_vel=kl.beta_vel,
        stepwise_estimator=kl.stepwise_estimator,
        eps=eps,
        clock=kl.controller_clock,
    )


def selector(config: TrainConfig, settings: StepSettings) -> StepSelector:
    """Which steps train; settings valid one by one may be impossible together: fail here."""
    sel = config.selection
    last = config.sampling.deterministic_last_step
    if sel.strategy == "all":
        chosen = make_selection("all", deterministic_last_step=last)
    elif sel.strategy in ("first_k", "random_fraction"):
        chosen = make_selection(sel.strategy, deterministic_last_step=last, fraction=sel.fraction)
    else:
        chosen = make_selection(
            "window",
            deterministic_last_step=last,
            size=sel.window_size,
            stride=sel.window_stride,
            shift_every=sel.window_every,
        )
    try:
        chosen.select(
            settings.num_steps, 1, generator=torch.Generator(), stochastic=settings.stochastic
        )
    except ValueError as error:
        raise UserError(
            f"selection.strategy {sel.strategy!r} with sampling.num_steps = "
            f"{settings.num_steps}: {error}"
        ) from error
    return chosen


def curriculum(config: TrainConfig) -> RewardCurriculum:
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
