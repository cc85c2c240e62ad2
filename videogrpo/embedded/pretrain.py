"""Flow-matching pretraining of the tiny Wan on the synthetic world: how the default is made.

Rectified flow (ALGORITHMS §1): x_σ = (1 − σ)·x₀ + σ·ε and the model regresses v = ε − x₀. Clips
are rendered on the fly from training-split prompts, so data is unlimited and the held-out
combinations are never seen. The shipped weights are an exponential moving average of the
trained ones, which gives visibly cleaner samples for a small model trained briefly.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from videogrpo.core import schedule
from videogrpo.embedded.tiny_wan import TinyWan, TinyWanConfig
from videogrpo.embedded.world import grammar
from videogrpo.embedded.world.render import render_prompts
from videogrpo.errors import UserError
from videogrpo.rewards.world import WorldReward
from videogrpo.runs.checkpoint import (
    load_state,
    restore_rng_state,
    rng_state,
    save_state,
    write_atomically,
)
from videogrpo.runs.evaluation import evaluate
from videogrpo.training.step import StepSettings

# The prompt that stands for "no prompt": dropped conditions are replaced by it, so the model
# learns the unconditional velocity of classifier-free guidance for sampling.negative_prompt's
# default, the empty string (as WanPipeline without a negative prompt).
UNCONDITIONAL_PROMPT = ""


@dataclass
class PretrainConfig:
    output: str = "pretrain-run"
    steps: int = 6000
    minutes: float = 0.0  # stop after this much wall time (0: no limit); resume continues
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    min_lr_fraction: float = 0.1  # cosine decay floor, as a fraction of lr
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # Share of prompts replaced by the negative prompt, so the model also learns the
    # unconditional velocity that classifier-free guidance needs.
    condition_dropout: float = 0.1
    eval_every: int = 500
    eval_prompts: int = 40
    eval_steps: int = 10
    shift: float = 3.0
    # Logit-normal σ: logit(σ) ~ N(mean, std). JiT uses N(0.8, 0.8) for clean prediction; the
    # sampler's shift 3 adds ln 3 ≈ 1.1 to logit(σ), so its first steps sit at σ > 0.87, where
    # N(0.8, 0.8) puts only ~5 % of samples: a model trained so ignored the prompt's direction at
    # high noise (docs/embedded_default.md). N(1.5, 1.2) puts ~37 % there and keeps low σ covered.
    sigma_logit_mean: float = 1.5
    sigma_logit_std: float = 1.2
    checkpoint_every: int = 250
    seed: int = 0
    threads: int = 0


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_fraction·lr at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_fraction + (1 - config.min_lr_fraction) * cosine)


def sample_sigmas(config: PretrainConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Logit-normal σ (SD3, JiT): most weight on mid-to-high noise, where layout is learned."""
    logits = config.sigma_logit_mean + config.sigma_logit_std * torch.randn(
        batch, generator=generator
    )
    return torch.sigmoid(logits)


def flow_matching_loss(
    model: TinyWan,
    prompts: list[str],
    videos: torch.Tensor,
    generator: torch.Generator,
    config: PretrainConfig,
) -> torch.Tensor:
    x0 = model.encode_videos(videos)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = sample_sigmas(config, x0.shape[0], generator)
    view = sigma.reshape(-1, 1, 1, 1, 1)
    noisy = (1 - view) * x0 + view * noise
    embeddings = model.encode(prompts, UNCONDITIONAL_PROMPT)
    velocity = model.velocity(noisy, sigma, embeddings, guidance_scale=1.0)
    return torch.nn.functional.mse_loss(velocity, noise - x0)


def run_eval(ema: TinyWan, config: PretrainConfig) -> dict[str, float]:
    """ODE samples of the EMA weights on held-out prompts, scored by the world's rewards."""
    prompts = list(grammar.prompts("heldout"))[: config.eval_prompts]
    ema.requires_grad_(False)
    settings = StepSettings("ode", 0.0, schedule.sigmas(config.eval_steps, config.shift))
    result = evaluate(ema, WorldReward(), prompts, settings, seed=config.seed)
    ema.clear_prompt_cache()
    return result.summary


def pretrain(config: PretrainConfig, resume: bool = False, command: str = "") -> Path:
    """Train (or continue) and write `output/model/`, the loadable EMA weights + provenance."""
    output = Path(config.output)
    checkpoint_dir = output / "checkpoint"
    if resume and not checkpoint_dir.is_dir():
        raise UserError(f"nothing to resume in {output}: {checkpoint_dir} does not exist")
    if not resume and checkpoint_dir.exists():
        raise UserError(
            f"{output} already holds a pretraining run; pass --resume or a new --output"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    output.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model = TinyWan(TinyWanConfig(seed=config.seed), grammar.tokenizer_vocabulary()).train()
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    step, elapsed, history, commands = 0, 0.0, [], []
    if resume:
        state = load_state(checkpoint_dir)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        restore_rng_state(state["rng"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        # Checkpoints written before commands were recorded lack the key.
        commands = state.get("commands", [])
    # Every invocation that shaped the weights, in order: a resume with more steps changes the
    # learning-rate schedule from that step on, so provenance needs all of them.
    commands.append({"command": command, "from_step": step, "steps": config.steps})

    def save_checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "rng": rng_state(),
            "step": step,
            "elapsed": elapsed,
            "history": history,
            "commands": commands,
        }
        write_atomically(checkpoint_dir, lambda tmp: save_state(tmp, state))

    started = time.monotonic() - elapsed
    progress = tqdm(total=config.steps, initial=step, desc="pretrain", dynamic_ncols=True)
    loss_ema = None
    while step < config.steps:
        if config.minutes and time.monotonic() - started > 60 * config.minutes:
            break
        prompts = grammar.sample_prompts(config.batch_size, "train", generator)
        videos = render_prompts(prompts, generator)
        dropped = torch.rand(len(prompts), generator=generator) < config.condition_dropout
        prompts = [UNCONDITIONAL_PROMPT if d else p for p, d in zip(prompts, dropped, strict=True)]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = flow_matching_loss(model, prompts, videos, generator, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
                ema_param.lerp_(param, 1 - decay)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        progress.update(1)
        progress.set_postfix(loss=f"{loss_ema:.4f}", lr=f"{learning_rate(config, step):.1e}")
        elapsed = time.monotonic() - started
        if step % config.eval_every == 0 or step == config.steps:
            scores = run_eval(ema, config)
            history.append({"step": step, "loss": loss_ema, "minutes": elapsed / 60, **scores})
            progress.write(json.dumps(history[-1]))
        if step % config.checkpoint_every == 0:
            save_checkpoint()
    progress.close()
    elapsed = time.monotonic() - started
    save_checkpoint()
    final_scores = run_eval(ema, config)
    provenance = {
        "command": command,
        "commands": commands,
        "config": asdict(config),
        "steps": step,
        "wall_minutes": round(elapsed / 60, 2),
        "final_loss": loss_ema,
        "heldout_eval_ode": final_scores,
        "history": history,
        "torch": torch.__version__,
    }

    def write_model(directory: Path) -> None:
        ema.save_pretrained(directory)
        (directory / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")

    model_dir = output / "model"
    write_atomically(model_dir, write_model)
    return model_dir
