"""A training run on disk: run directory, eval before/after, checkpoints, resume, summary, report.

`train(config)` is what `videogrpo train` and the Python API call. Everything a run writes lives
in its directory (layout in docs/report.md); checkpoints and summaries are written atomically, and
nothing is created until the config, model and prompts have been validated. Under torchrun every
rank calls it; rank 0 alone writes the directory, and every rank writes its checkpoint shards
(runs/ranks.py, docs/distributed.md).
"""

from __future__ import annotations

import json
import time
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from videogrpo.runs.checkpoint import (
    restore_rng_state,
    rng_state,
    save_state,
    temporary_folder,
    write_atomically,
    write_text_atomically,
)
from videogrpo.config import TrainConfig, config_to_yaml, load_config
from videogrpo.config.schema import to_dict
from videogrpo.distributed.layout import check_batch_layout
from videogrpo.distributed.parallel import ONE_PROCESS, Parallel, parallelize
from videogrpo.distributed.world import World, close_world, init_world
from videogrpo.errors import UserError
from videogrpo.models.base import VideoGenerator
from videogrpo.models.registry import build_model, enable_training, resolve_device
from videogrpo.rewards.base import RewardModel
from videogrpo.rewards.registry import build_reward, effective_weights
from videogrpo.runs.evaluation import EvalResult, evaluate
from videogrpo.runs.ranks import (
    export_model,
    read_checkpoint,
    sharded_checkpoint_writer,
    trained_weights,
)
from videogrpo.training.build import eval_step_settings
from videogrpo.training.prompts import load_prompts
from videogrpo.runs.tracking import MetricsLog
from videogrpo.training.trainer import GRPOTrainer, IterationResult, RewardsFailed
from videogrpo.runs.video_io import write_gif

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoint"
ROLLOUT_GROUPS_SAVED = 2  # groups of each saved rollout written as GIFs (auditing, not stats)
# A stopped run's message names the first reasons its reward calls failed, each cut short.
REASONS_SHOWN, REASON_CHARACTERS = 2, 200

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


def load_model(config: TrainConfig) -> VideoGenerator:
    """The configured backbone with its trainable part (LoRA or full) switched on."""
    return enable_training(
        build_model(config.model, config.sampling, config.memory), config.model
    )


def load_shared_model(config: TrainConfig, world: World) -> tuple[VideoGenerator, Parallel]:
    """`load_model` for one rank of a torchrun job: DDP replicas or FSDP2 shards of the model."""
    if world.size == 1:
        return load_model(config), ONE_PROCESS
    data = config.data
    check_batch_layout(
        data.prompts_per_iteration, data.group_size, config.optim.minibatches, world.size
    )
    device = resolve_device(config.model.device)
    if device.type == "cuda" and device.index is not None:
        raise UserError(
            f"model.device: {config.model.device!r} puts every rank on one device; use auto or "
            "cuda (each rank takes the GPU of its LOCAL_RANK)"
        )
    model = build_model(config.model, config.sampling, config.memory)
    return parallelize(model, config.model, config.distributed.strategy, world)


def load_for_inference(
    model_dir: str | None, run_dir: str | None, model_type: str | None = None
) -> VideoGenerator:
    """A base model (the embedded default, or a folder of `model_type`), with a run's trained
    weights if a run is given; the run's own model settings are the defaults then."""
    config = TrainConfig() if run_dir is None else read_run_config(Path(run_dir))
    model_config = config.model
    if model_type is not None:
        model_config = replace(model_config, type=model_type, options={})
    if model_dir is not None:
        model_config = replace(model_config, path=model_dir)
    model = build_model(model_config, config.sampling)
    if run_dir is not None:
        apply_run_weights(model, Path(run_dir))
    return model


def read_run_config(run_dir: Path) -> TrainConfig:
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / CHECKPOINT_DIR).is_dir():
        raise UserError(f"{run_dir} is not a run directory with a checkpoint")
    return load_config(run_dir / CONFIG_FILE)


def apply_run_weights(model: VideoGenerator, run_dir: Path) -> None:
    """Give a freshly loaded base model the latest trained weights of a run (of any world
    size)."""
    enable_training(model, read_run_config(run_dir).model)
    model.load_trainable_state_dict(trained_weights(run_dir / CHECKPOINT_DIR))
    model.eval()


def load_reward(config: TrainConfig) -> RewardModel:
    """The configured reward(s); settles the static weights against what the reward returns."""
    reward = build_reward(config.reward)
    if config.reward.curriculum == "static":
        weights = effective_weights(config.reward.weights, reward.components)
        if weights != config.reward.weights:
            logger.warning(
                "reward.weights names %s, none of which the %r reward returns; weighting its "
                "components %s equally (set reward.weights to choose)",
                ", ".join(config.reward.weights),
                config.reward.type,
                ", ".join(reward.components),
            )
            config.reward.weights = weights
    else:
        missing = [name for name in config.reward.order if name not in reward.components]
        if missing:
            raise UserError(
                f"reward.order: component(s) {missing} are not returned by the reward, which "
                f"gives {list(reward.components)}"
            )
    return reward


def rewards_failed_message(run_dir: Path, failure: RewardsFailed) -> str:
    """One line: what failed, what was kept, how to go on."""
    shown = [reason[:REASON_CHARACTERS] for reason in failure.reasons[:REASONS_SHOWN]]
    reasons = "; ".join(shown) or "every score was NaN"
    return (
        f"iteration {failure.iteration}: the reward failed for every sample ({reasons}); the run "
        f"stopped with iteration {failure.iteration - 1} checkpointed; fix the reward and "
        f"continue with: videogrpo train --resume {run_dir}"
    )


def failed_samples(run_dir: Path) -> int:
    """Samples of the whole run (all of metrics.jsonl, across resumes) whose reward failed."""
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    return int(sum(json.loads(row).get("reward/failed_samples", 0) for row in rows if row))


def check_prompts(reward: RewardModel, prompts: list[str]) -> None:
    """A reward that scores only some prompts (the world's grammar) rejects the others now."""
    check = getattr(reward, "check_prompts", None)
    if check is not None:
        check(prompts)


def run_eval(trainer: GRPOTrainer, eval_prompts: list[str], keep_videos: int = 0) -> EvalResult:
    """Held-out eval; under torchrun sharded over the ranks, every rank gets the scores."""
    config = trainer.config
    return evaluate(
        trainer.model,
        trainer.reward,
        eval_prompts,
        eval_step_settings(
            config.eval.num_steps, config.sampling.shift, config.sampling.guidance_scale
        ),
        samples_per_prompt=config.eval.samples_per_prompt,
        seed=config.eval.seed,
        negative_prompt=config.sampling.negative_prompt,
        batch_size=config.eval.batch_size,
        decode_batch_size=config.memory.decode_batch_size,
        keep_videos=keep_videos,
        composite_of=config.reward.composite_components(),
        parallel=trainer.parallel,
    )


def save_eval(run_dir: Path, iteration: int, result: EvalResult, log: MetricsLog) -> None:
    """eval.jsonl gets the numbers; eval_videos/iter_N/ the kept clips on their fixed seeds."""
    log.write(iteration, result.summary)
    if result.videos is None:
        return
    folder = run_dir / "eval_videos" / f"iter_{iteration:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for i in range(len(result.videos)):
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
    assert result.videos is not None, "the trainer was asked to keep no videos"
    for g in range(min(ROLLOUT_GROUPS_SAVED, len(result.videos) // group_size)):
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
    """The held-out means of summary.json: every reward component and their composite."""
    return {key: result.summary[key] for key in result.rewards}


def default_run_name(config_path: str | None, seed: int) -> str:
    preset = Path(config_path).stem if config_path else "default"
    return f"{preset}-seed{seed}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare_run(
    config_path: str | None, overrides: list[str], world: World | None = None
) -> tuple[TrainConfig, Path]:
    """Validate everything, then create the run directory (never half-made on bad input).
    `world`: the ranks of a torchrun job, which all take rank 0's default run name."""
    config = load_config(config_path, overrides)
    name = config.run.name or default_run_name(config_path, config.run.seed)
    if world is not None:
        name = world.broadcast_text(name)
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
    """Run (or resume) GRPO training; returns the run directory and summary.json's content.

    Under torchrun (WORLD_SIZE > 1) this process joins the job's process group first and leaves
    it at the end; otherwise no process group is created.
    """
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
        world = init_world(config.distributed.backend)
    else:
        config = load_config(config_path, overrides or [])
        world = init_world(config.distributed.backend)
    try:
        if resume is None:
            config, run_dir = prepare_run(config_path, overrides or [], world)
        return _train(config, run_dir, resume is not None, progress, world)
    finally:
        close_world(world)


def _train(
    config: TrainConfig, run_dir: Path, resume: bool, progress: bool, world: World
) -> RunResult:
    main = world.is_main  # rank 0 writes the run directory
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    train_prompts = load_prompts(config.data.prompts)
    eval_prompts = load_prompts(config.eval.prompts)
    if config.eval.max_prompts:
        eval_prompts = eval_prompts[: config.eval.max_prompts]
    model, parallel = load_shared_model(config, world)
    reward = load_reward(config)
    check_prompts(reward, [*train_prompts, *eval_prompts])
    cache_prompts = getattr(model, "cache_prompts", None)
    if config.memory.text_cache_dir and cache_prompts is not None:
        # Encode every prompt once, up front: afterwards the text encoder never runs again.
        # Rank 0 writes the cache first; the other ranks then find every prompt in it.
        every_prompt = [*train_prompts, *eval_prompts, config.sampling.negative_prompt]
        if main:
            cache_prompts(every_prompt)
        world.barrier()
        if not main:
            cache_prompts(every_prompt)
    trainer = GRPOTrainer(config, model, reward, train_prompts, parallel=parallel)

    world.barrier()  # every rank has checked the run directory before rank 0 creates it
    metrics = evals = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(run_dir / CONFIG_FILE, config_to_yaml(config))
        metrics = MetricsLog(run_dir / "metrics.jsonl", run_dir / "tensorboard")
        evals = MetricsLog(run_dir / "eval.jsonl")
    wall_before = 0.0
    eval_before = None
    if resume:
        state = read_checkpoint(run_dir / CHECKPOINT_DIR, trainer, parallel)
        trainer.load_state_dict(state["trainer"])
        restore_rng_state(state["rng"])
        wall_before, eval_before = state["wall_seconds"], state["eval_before"]
        if main:
            metrics.truncate_after(trainer.iteration)
            evals.truncate_after(trainer.iteration)
    started = time.monotonic() - wall_before
    group_size = config.data.group_size

    def checkpoint() -> None:
        state = {
            "trainer": trainer.state_dict(),
            "rng": rng_state(),
            "wall_seconds": time.monotonic() - started,
            "eval_before": eval_before,
        }
        if world.size == 1:
            write_atomically(run_dir / CHECKPOINT_DIR, lambda tmp: save_state(tmp, state))
            return
        skeleton, write_tensors = sharded_checkpoint_writer(state, parallel)

        def write(tmp: Path) -> None:
            save_state(tmp, skeleton)
            write_tensors(tmp)

        if main:
            write_atomically(run_dir / CHECKPOINT_DIR, write)
        else:
            write_tensors(temporary_folder(run_dir / CHECKPOINT_DIR))
        world.barrier()  # in place before any rank goes on

    def record_eval(iteration: int, result: EvalResult) -> None:
        if main:
            save_eval(run_dir, iteration, result, evals)

    if eval_before is None:
        before = run_eval(trainer, eval_prompts, config.eval.videos)
        record_eval(0, before)
        eval_before = summary_of(before)
        checkpoint()

    bar = tqdm(
        total=config.run.iterations,
        initial=trainer.iteration,
        desc="GRPO",
        unit="it",
        dynamic_ncols=True,
        disable=not (progress and main),
    )
    while trainer.iteration < config.run.iterations:
        iteration = trainer.iteration + 1
        videos_due = bool(config.run.videos_every) and iteration % config.run.videos_every == 0
        rng_before = rng_state()
        try:
            result = trainer.step(keep_videos=ROLLOUT_GROUPS_SAVED * group_size if videos_due else 0)
        except RewardsFailed as failure:  # keep every completed iteration, then stop
            restore_rng_state(rng_before)
            checkpoint()
            if main:
                metrics.close()
            raise UserError(rewards_failed_message(run_dir, failure)) from failure
        if main:
            metrics.write(iteration, result.metrics)
            if videos_due:
                save_rollout(run_dir, iteration, result, group_size)
        eval_due = config.run.eval_every and iteration % config.run.eval_every == 0
        if eval_due and iteration < config.run.iterations:
            record_eval(iteration, run_eval(trainer, eval_prompts))
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

    after = run_eval(trainer, eval_prompts, config.eval.videos)
    if main:
        evals.truncate_after(trainer.iteration - 1)  # a final eval a crash left behind is redone
    record_eval(trainer.iteration, after)
    if config.model.finetune == "lora":  # the adapter, as diffusers' load_lora_weights reads it
        folder, save = "lora", "save_lora"
    else:  # the whole fine-tuned model, loadable by `videogrpo eval/sample --model RUN/model`
        folder, save = "model", "save_pretrained"
    export_model(
        trainer.model,
        config,
        parallel,
        lambda whole: write_atomically(run_dir / folder, getattr(whole, save)),
    )
    if main:
        summary = {
            "config": to_dict(config),
            "iterations": trainer.iteration,
            "eval_before": eval_before,
            "eval_after": summary_of(after),
            "reward_failed_samples": failed_samples(run_dir),
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        metrics.close()
        from videogrpo.runs.report import write_report

        write_report(run_dir)
    world.barrier()  # the other ranks return rank 0's summary
    return RunResult(run_dir, json.loads((run_dir / "summary.json").read_text()))
