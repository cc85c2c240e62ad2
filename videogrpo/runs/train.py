"""A training run on disk: run directory, eval before/after, checkpoints, resume, summary, report.

`train(config)` is what `videogrpo train` and the Python API call. Everything a run writes lives
in its directory (layout in docs/report.md); checkpoints and summaries are written atomically, and
nothing is created until the config, model and prompts have been validated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from videogrpo.runs.checkpoint import (
    load_state,
    restore_rng_state,
    rng_state,
    save_state,
    write_atomically,
    write_text_atomically,
)
from videogrpo.config import TrainConfig, config_to_yaml, load_config
from videogrpo.config.schema import to_dict
from videogrpo.errors import UserError
from videogrpo.runs.evaluation import EvalResult, evaluate
from videogrpo.models.base import VideoGenerator
from videogrpo.training.prompts import load_prompts
from videogrpo.rewards.base import RewardModel
from videogrpo.runs.tracking import MetricsLog
from videogrpo.training.trainer import GRPOTrainer, IterationResult
from videogrpo.runs.video_io import write_gif

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoint"
SUMMARY_KEYS = ("vq", "mq", "ta", "composite")
ROLLOUT_GROUPS_SAVED = 2  # groups of each saved rollout written as GIFs (auditing, not stats)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


def enable_training_mode(model: VideoGenerator, config: TrainConfig) -> VideoGenerator:
    if config.model.finetune == "lora":
        model.enable_lora(config.model.lora_rank, config.model.lora_alpha)
    else:
        model.enable_full_finetuning()
    return model


def load_model(config: TrainConfig) -> VideoGenerator:
    """The configured backbone with its trainable part (LoRA or full) switched on."""
    from videogrpo.embedded.tiny_wan import TinyWan, load_default

    path = config.model.path
    model = load_default() if path is None else TinyWan.from_pretrained(path)
    return enable_training_mode(model, config)


def load_for_inference(model_dir: str | None, run_dir: str | None) -> VideoGenerator:
    """A base model (the embedded default or a folder), with a run's trained weights if given."""
    from videogrpo.embedded.tiny_wan import TinyWan, load_default

    model = load_default() if model_dir is None else TinyWan.from_pretrained(model_dir)
    if run_dir is not None:
        apply_run_weights(model, Path(run_dir))
    return model


def apply_run_weights(model: VideoGenerator, run_dir: Path) -> None:
    """Give a freshly loaded base model the latest trained weights of a run."""
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / CHECKPOINT_DIR).is_dir():
        raise UserError(f"{run_dir} is not a run directory with a checkpoint")
    enable_training_mode(model, load_config(run_dir / CONFIG_FILE))
    model.load_trainable_state_dict(load_state(run_dir / CHECKPOINT_DIR)["trainer"]["weights"])
    model.eval()


def load_reward(config: TrainConfig) -> RewardModel:
    from videogrpo.rewards.world import WorldReward

    reward = WorldReward()
    missing = [name for name in config.reward.weights if name not in reward.components]
    if config.reward.curriculum != "static":
        missing += [name for name in config.reward.order if name not in reward.components]
    if missing:
        raise UserError(
            f"reward: component(s) {missing} are not returned by the {config.reward.name!r} "
            f"reward, which gives {list(reward.components)}"
        )
    return reward


def check_prompts(config: TrainConfig, prompts: list[str]) -> None:
    """The world reward scores only its grammar: reject other prompts before the run starts."""
    if config.reward.name == "world":
        from videogrpo.embedded.world.grammar import parse_prompt

        for prompt in dict.fromkeys(prompts):
            parse_prompt(prompt)


def run_eval(trainer: GRPOTrainer, eval_prompts: list[str]) -> EvalResult:
    config = trainer.config
    return evaluate(
        trainer.model,
        trainer.reward,
        eval_prompts,
        samples_per_prompt=config.eval.samples_per_prompt,
        seed=config.eval.seed,
        num_steps=config.eval.num_steps,
        shift=config.sampling.shift,
        guidance_scale=config.sampling.guidance_scale,
    )


def save_eval(run_dir: Path, iteration: int, result: EvalResult, log: MetricsLog, videos: int):
    """eval.jsonl gets the numbers; eval_videos/iter_N/ the first clips on their fixed seeds."""
    log.write(iteration, result.summary)
    folder = run_dir / "eval_videos" / f"iter_{iteration:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for i in range(min(videos, len(result.prompts))):
        name = f"{i:03d}.gif"
        write_gif(folder / name, result.videos[i])
        rewards = {key: float(value[i]) for key, value in result.rewards.items()}
        index.append(
            {"file": name, "prompt": result.prompts[i], "seed": result.seeds[i], "rewards": rewards}
        )
    write_text_atomically(folder / "prompts.json", json.dumps(index, indent=1) + "\n")


def save_rollout(run_dir: Path, iteration: int, result: IterationResult, group_size: int) -> None:
    """A few groups of this iteration's rollout with every sample's rewards and advantage."""
    folder = run_dir / "rollouts" / f"iter_{iteration:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    groups = []
    for g in range(min(ROLLOUT_GROUPS_SAVED, len(result.prompts) // group_size)):
        samples = []
        for j in range(group_size):
            i = g * group_size + j
            name = f"group{g}_sample{j}.gif"
            write_gif(folder / name, result.videos[i])
            rewards = {key: float(value[i]) for key, value in result.rewards.items()}
            samples.append(
                {"file": name, "rewards": rewards, "advantage": float(result.advantages[i])}
            )
        groups.append({"prompt": result.prompts[g * group_size], "samples": samples})
    write_text_atomically(folder / "rewards.json", json.dumps(groups, indent=1) + "\n")


def summary_of(result: EvalResult) -> dict[str, float]:
    return {key: result.summary[key] for key in SUMMARY_KEYS if key in result.summary}


def default_run_name(config_path: str | None, seed: int) -> str:
    preset = Path(config_path).stem if config_path else "default"
    return f"{preset}-seed{seed}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare_run(config_path: str | None, overrides: list[str]) -> tuple[TrainConfig, Path]:
    """Validate everything, then create the run directory (never half-made on bad input)."""
    config = load_config(config_path, overrides)
    name = config.run.name or default_run_name(config_path, config.run.seed)
    run_dir = Path(config.run.output_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(
            f"run directory {run_dir} already exists; resume it with --resume {run_dir}"
        )
    return config, run_dir


def refuse_finished_run(run_dir: Path, iterations: int) -> None:
    """A finished run resumed without more iterations would only redo its final eval."""
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return
    done = json.loads(summary_file.read_text())["iterations"]
    if iterations <= done:
        raise UserError(
            f"run {run_dir} already finished {done} iterations; to continue it, raise the total: "
            f"--resume {run_dir} --set run.iterations={done + iterations}"
        )


def train(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
) -> RunResult:
    """Run (or resume) GRPO training; returns the run directory and summary.json's content."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(
                f"cannot resume {run_dir}: no {CONFIG_FILE} there; pass a run directory"
            )
        if not (run_dir / CHECKPOINT_DIR).is_dir():
            raise UserError(f"cannot resume {run_dir}: it has no checkpoint yet; start a new run")
        config = load_config(run_dir / CONFIG_FILE, overrides)
        refuse_finished_run(run_dir, config.run.iterations)
    else:
        config, run_dir = prepare_run(config_path, overrides or [])
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    train_prompts = load_prompts(config.data.prompts)
    eval_prompts = load_prompts(config.eval.prompts)
    if config.eval.max_prompts:
        eval_prompts = eval_prompts[: config.eval.max_prompts]
    model = load_model(config)
    reward = load_reward(config)
    check_prompts(config, [*train_prompts, *eval_prompts])
    trainer = GRPOTrainer(config, model, reward, train_prompts)

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_dir / CONFIG_FILE, config_to_yaml(config))
    metrics = MetricsLog(run_dir / "metrics.jsonl", run_dir / "tensorboard")
    evals = MetricsLog(run_dir / "eval.jsonl")
    wall_before = 0.0
    eval_before = None
    if resume is not None:
        state = load_state(run_dir / CHECKPOINT_DIR)
        trainer.load_state_dict(state["trainer"])
        restore_rng_state(state["rng"])
        wall_before, eval_before = state["wall_seconds"], state["eval_before"]
        metrics.truncate_after(trainer.iteration)
        evals.truncate_after(trainer.iteration)
    started = time.monotonic() - wall_before

    def checkpoint() -> None:
        state = {
            "trainer": trainer.state_dict(),
            "rng": rng_state(),
            "wall_seconds": time.monotonic() - started,
            "eval_before": eval_before,
        }
        write_atomically(run_dir / CHECKPOINT_DIR, lambda tmp: save_state(tmp, state))

    if eval_before is None:
        before = run_eval(trainer, eval_prompts)
        save_eval(run_dir, 0, before, evals, config.eval.videos)
        eval_before = summary_of(before)
        checkpoint()

    bar = tqdm(
        total=config.run.iterations,
        initial=trainer.iteration,
        desc="GRPO",
        unit="it",
        dynamic_ncols=True,
        disable=not progress,
    )
    while trainer.iteration < config.run.iterations:
        result = trainer.step()
        iteration = trainer.iteration
        metrics.write(iteration, result.metrics)
        if config.run.videos_every and iteration % config.run.videos_every == 0:
            save_rollout(run_dir, iteration, result, config.data.group_size)
        eval_due = config.run.eval_every and iteration % config.run.eval_every == 0
        if eval_due and iteration < config.run.iterations:
            save_eval(run_dir, iteration, run_eval(trainer, eval_prompts), evals, 0)
        if iteration % config.run.checkpoint_every == 0 or iteration == config.run.iterations:
            checkpoint()
        m = result.metrics
        bar.set_postfix(
            reward=f"{m['reward/composite_mean']:.3f}",
            kl=f"{m.get('kl/pos', 0.0):.1e}",
            lam=f"{m['kl/coef']:.0e}",
            clip=f"{m['policy/clip_frac']:.2f}",
        )
        bar.update(1)
    bar.close()

    after = run_eval(trainer, eval_prompts)
    evals.truncate_after(trainer.iteration - 1)  # a final eval a crash left behind is redone
    save_eval(run_dir, trainer.iteration, after, evals, config.eval.videos)
    if config.model.finetune == "lora":
        write_atomically(run_dir / "lora", trainer.model.save_lora)
    else:  # the whole fine-tuned model, loadable by `videogrpo eval/sample --model RUN/model`
        write_atomically(run_dir / "model", trainer.model.save_pretrained)
    summary = {
        "config": to_dict(config),
        "iterations": trainer.iteration,
        "eval_before": eval_before,
        "eval_after": summary_of(after),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    metrics.close()
    from videogrpo.runs.report import write_report

    write_report(run_dir)
    return RunResult(run_dir, summary)
