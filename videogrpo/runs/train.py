"""A training run on disk: run directory, eval before/after, checkpoints, resume, summary, report.

`train(config)` is what `videogrpo train` and the Python API call. Everything a run writes lives
in its directory (layout in docs/report.md). Nothing is created, and on resume nothing changes,
until the config, model, prompts, checkpoint and logs have all been read and checked; one
process at a time may use a run directory (runs/rundir.py); checkpoints survive a kill at any
instant (runs/checkpoint.py); SIGTERM or Ctrl-C stops after the current iteration with a
checkpoint (runs/stopping.py). docs/reliability.md lists the guarantees and their tests.
Under torchrun every rank calls `train`; rank 0 alone writes the directory and holds its lock,
and every rank writes its checkpoint shards (runs/ranks.py, docs/distributed.md).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from videogrpo import faults
from videogrpo.config import TrainConfig, config_to_yaml
from videogrpo.config.schema import to_dict
from videogrpo.distributed.world import World, close_world, init_world
from videogrpo.errors import RunStopped
from videogrpo.rewards.base import RewardModel
from videogrpo.runs.checkpoint import (
    find_checkpoint,
    promote_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    write_atomically,
    write_text_atomically,
)
from videogrpo.runs.evaluation import EvalResult, evaluate
from videogrpo.runs.loading import load_reward, load_shared_model
from videogrpo.runs.ranks import export_model, fill_state, save_job_checkpoint
from videogrpo.runs.resources import check_run_fits
from videogrpo.runs.resume import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    ResumePoint,
    check_resumable,
    finished_iterations,
    prepare_run,
    read_resume_point,
    refuse_existing_run,
    refuse_finished_run,
    restore,
    saved_config,
)
from videogrpo.runs.rundir import (
    RunLock,
    clear_run_dir,
    create_run_dir,
)
from videogrpo.runs.stopping import SIGNAL_EXIT_BASE, GracefulStop
from videogrpo.runs.tracking import (
    NONFINITE_KEY,
    MetricsLog,
    dumps_strict,
    records_through,
    strict_json,
)
from videogrpo.runs.video_io import write_gif
from videogrpo.training.build import eval_step_settings
from videogrpo.training.prompts import load_prompts
from videogrpo.training.trainer import GRPOTrainer, IterationResult, RewardsFailed

TENSORBOARD_DIR = "tensorboard"
REPORT_FILE = "report.html"
DIVERGED_EXIT_CODE = 3  # a run stopped because its weights overflowed (not bad input: 2)
REWARDS_FAILED_EXIT_CODE = 4  # stopped because the reward scored no sample of an iteration
ROLLOUT_GROUPS_SAVED = 2  # groups of each saved rollout written as GIFs (auditing, not stats)
# A stopped run's message names the first reasons its reward calls failed, each cut short.
REASONS_SHOWN, REASON_CHARACTERS = 2, 200

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


def rewards_failed_message(run_dir: Path, failure: RewardsFailed) -> str:
    """One line: what failed, what was kept, how to go on."""
    shown = [reason[:REASON_CHARACTERS] for reason in failure.reasons[:REASONS_SHOWN]]
    reasons = "; ".join(shown) or "every score was NaN"
    return (
        f"iteration {failure.iteration}: the reward failed for every sample ({reasons}); the run "
        f"stopped with iteration {failure.iteration - 1} checkpointed; fix the reward and "
        f"continue with: videogrpo train --resume {run_dir}"
    )


def failure_streak(metric_lines: list[str], threshold: float) -> int:
    """Trailing iterations of a metrics log whose failed fraction exceeded `threshold`."""
    streak = 0
    for line in reversed(metric_lines):
        if json.loads(line).get("reward/failed_fraction", 0.0) <= threshold:
            break
        streak += 1
    return streak


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
    write_text_atomically(folder / "prompts.json", dumps_strict(index, indent=1) + "\n")


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
    write_text_atomically(folder / "rewards.json", dumps_strict(groups, indent=1) + "\n")


def summary_of(result: EvalResult) -> dict[str, float]:
    """The held-out means of summary.json: every reward component and their composite."""
    return {key: result.summary[key] for key in result.rewards}


def train(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    restart: str | Path | None = None,
) -> RunResult:
    """Run, resume or restart GRPO training; returns the run directory and summary.json's content.

    `resume`: continue RUN_DIR from its newest complete checkpoint (from the start if it has
    none). `restart`: empty RUN_DIR and start it over with its saved config. Either way the run
    directory is locked for this process, and nothing in it changes until everything has been
    read and checked. Under torchrun (WORLD_SIZE > 1) this process joins the job's process group
    once the config is known, and leaves it at the end; otherwise none is created.
    """
    faults.planned()  # a malformed fault request fails before anything runs
    overrides = overrides or []
    point = None
    if resume is not None:
        run_dir = Path(resume)
        config = saved_config(run_dir, overrides, "resume")
        check_resumable(run_dir, config)
    elif restart is not None:
        run_dir = Path(restart)
        config = saved_config(run_dir, overrides, "restart")
    else:
        config, run_dir = prepare_run(config_path, overrides)
    world = init_world(config.distributed.backend)
    try:
        run_dir = Path(world.broadcast_text(str(run_dir)))  # rank 0's default name (its clock)
        lock = RunLock(run_dir)
        try:
            if run_dir.is_dir() and world.is_main:  # a new run's is created and locked later
                lock.acquire()
            if resume is not None:
                done = finished_iterations(run_dir)
                if done is not None and config.run.iterations <= done:
                    if (run_dir / REPORT_FILE).is_file():
                        refuse_finished_run(run_dir, done, config.run.iterations)
                    return finish_report(run_dir, world)  # killed after summary.json
                point = read_resume_point(run_dir)
            return _run(config, run_dir, point, lock, restart is not None, progress, world)
        finally:
            lock.release()
    finally:
        close_world(world)


def _run(
    config: TrainConfig,
    run_dir: Path,
    point: ResumePoint | None,
    lock: RunLock,
    restart: bool,
    progress: bool,
    world: World,
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
        # Rank 0 fills the cache first; the other ranks then find every prompt in it.
        every_prompt = [*train_prompts, *eval_prompts, config.sampling.negative_prompt]
        if main:
            cache_prompts(every_prompt)
        world.barrier()
        if not main:
            cache_prompts(every_prompt)
    trainer = GRPOTrainer(config, model, reward, train_prompts, parallel=parallel)
    check_run_fits(
        config, model, trainer.kl.needs_rollout_means, len(eval_prompts), ranks=world.size
    )
    resumed = point is not None and point.state is not None
    if resumed:
        state = fill_state(point.state, point.found.path, trainer, parallel)
        restore(trainer, run_dir, state)

    # Everything is checked: from here on the run directory changes.
    world.barrier()  # every rank has checked and read it
    metrics = evals = None
    if main:
        if not lock.held:  # a new run: create, lock, make sure no other process got there first
            create_run_dir(run_dir)
            lock.acquire()
            if any(run_dir.iterdir()):
                refuse_existing_run(run_dir)
        if restart:
            clear_run_dir(run_dir, CONFIG_FILE)
        if resumed:
            promote_checkpoint(point.found, run_dir / CHECKPOINT_DIR)
        write_text_atomically(run_dir / CONFIG_FILE, config_to_yaml(config))
        metrics = MetricsLog(
            run_dir / METRICS_FILE,
            run_dir / TENSORBOARD_DIR,
            purge_step=None if point is None else trainer.iteration + 1,
        )
        evals = MetricsLog(run_dir / EVAL_FILE)
        if point is not None:
            metrics.keep_only(point.metrics_lines)
            evals.keep_only(point.eval_lines)
    world.barrier()  # the directory is rank 0's before any rank writes shards into it
    try:
        with GracefulStop() as stop:
            return _train_loop(
                config, run_dir, trainer, point, eval_prompts, metrics, evals, stop, progress
            )
    finally:
        if metrics is not None:
            metrics.close()


def _train_loop(
    config: TrainConfig,
    run_dir: Path,
    trainer: GRPOTrainer,
    point: ResumePoint | None,
    eval_prompts: list[str],
    metrics: MetricsLog | None,
    evals: MetricsLog | None,
    stop: GracefulStop,
    progress: bool,
) -> RunResult:
    """The loop; under torchrun `metrics` and `evals` are rank 0's alone (None elsewhere)."""
    world = trainer.parallel.world
    main = world.is_main
    state = point.state if point is not None and point.state is not None else None
    wall_before = 0.0 if state is None else state["wall_seconds"]
    eval_before = None if state is None else state["eval_before"]
    started = time.monotonic() - wall_before
    group_size = config.data.group_size
    tolerated = config.reward.max_failed_fraction
    failing = 0 if point is None else failure_streak(point.metrics_lines, tolerated)

    def checkpoint() -> None:
        state = {
            "trainer": trainer.state_dict(),
            "rng": rng_state(),
            "wall_seconds": time.monotonic() - started,
            "eval_before": eval_before,
        }
        if world.size == 1:
            save_checkpoint(run_dir / CHECKPOINT_DIR, state, step=trainer.iteration)
        else:
            save_job_checkpoint(
                run_dir / CHECKPOINT_DIR, state, trainer.iteration, trainer.parallel
            )

    def record_eval(iteration: int, result: EvalResult) -> None:
        if main:
            save_eval(run_dir, iteration, result, evals)

    def stop_asked() -> bool:
        """A stop signal reached some rank: every rank stops after the same iteration."""
        return world.any(stop.received is not None)

    def stopped() -> RunStopped:
        received = stop.received
        return RunStopped(
            f"stopped by {'a stop signal' if received is None else received.name} after "
            f"iteration {trainer.iteration} of {config.run.iterations}, checkpoint saved; "
            f"continue with: videogrpo train --resume {run_dir}",
            stop.exit_code if received is not None else SIGNAL_EXIT_BASE + int(signal.SIGTERM),
        )

    if eval_before is None:
        before = run_eval(trainer, eval_prompts, config.eval.videos)
        record_eval(0, before)
        faults.reached("eval_before", 0)
        eval_before = summary_of(before)
        checkpoint()
        if stop_asked():
            raise stopped()

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
            result = trainer.step(
                keep_videos=ROLLOUT_GROUPS_SAVED * group_size if videos_due else 0
            )
        except RewardsFailed as failure:  # keep every completed iteration, then stop
            restore_rng_state(rng_before)
            checkpoint()
            message = rewards_failed_message(run_dir, failure)
            raise RunStopped(message, REWARDS_FAILED_EXIT_CODE) from failure
        except ValueError as error:  # e.g. the KL controller refusing a NaN KL
            if weights_finite(trainer):
                raise
            raise diverged(run_dir, iteration) from error
        if not weights_finite(trainer):
            raise diverged(run_dir, iteration)
        if main:
            metrics.write(iteration, result.metrics)
        # reward/failed_fraction is the whole batch's: every rank counts the same streak
        failing = failing + 1 if result.metrics["reward/failed_fraction"] > tolerated else 0
        if failing >= config.reward.max_failed_iterations:
            checkpoint()
            raise RunStopped(
                f"iterations {iteration - failing + 1}-{iteration}: the reward failed for more "
                f"than {tolerated:.0%} of the samples {failing} times in a row (see "
                f"reward/failed_calls in metrics.jsonl); the run stopped with iteration "
                f"{iteration} checkpointed; fix the reward (or raise reward.max_failed_fraction) "
                f"and continue with: videogrpo train --resume {run_dir}",
                REWARDS_FAILED_EXIT_CODE,
            )
        if main and videos_due:
            save_rollout(run_dir, iteration, result, group_size)
        eval_due = config.run.eval_every and iteration % config.run.eval_every == 0
        if eval_due and iteration < config.run.iterations:
            record_eval(iteration, run_eval(trainer, eval_prompts))
        asked = stop_asked()
        checkpoint_due = iteration % config.run.checkpoint_every == 0
        if checkpoint_due or iteration == config.run.iterations or asked:
            checkpoint()
        m = result.metrics
        bar.set_postfix(
            reward=f"{m['reward/composite_mean']:.3f}",
            kl=f"{m.get('kl/pos', 0.0):.1e}",
            lam=f"{m['kl/coef']:.0e}",
            clip=f"{m['policy/clip_frac']:.2f}",
        )
        bar.update(1)
        if asked:
            raise stopped()
    bar.close()

    after = run_eval(trainer, eval_prompts, config.eval.videos)
    if main:
        evals.keep_only(records_through(evals.path, trainer.iteration - 1))  # a crash's eval
    record_eval(trainer.iteration, after)
    if config.model.finetune == "lora":  # the adapter, as diffusers' load_lora_weights reads it
        folder, save = "lora", "save_lora"
    else:  # the whole fine-tuned model, loadable by `videogrpo eval/sample --model RUN/model`
        folder, save = "model", "save_pretrained"
    export_model(
        trainer.model,
        config,
        trainer.parallel,
        lambda whole: write_atomically(run_dir / folder, getattr(whole, save)),
    )
    faults.reached("final_writes", trainer.iteration)
    if main:
        summary = {
            "config": to_dict(config),
            "iterations": trainer.iteration,
            "eval_before": eval_before,
            "eval_after": summary_of(after),
            "reward_failed_samples": failed_samples(run_dir),
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        (run_dir / REPORT_FILE).unlink(missing_ok=True)  # a continued run's old report is stale
        summary, nonfinite = strict_json(summary)
        if nonfinite:
            summary[NONFINITE_KEY] = nonfinite
            logger.warning(
                "%s: %d non-finite held-out numbers written as null", SUMMARY_FILE, nonfinite
            )
        write_text_atomically(run_dir / SUMMARY_FILE, dumps_strict(summary, indent=2) + "\n")
    return finish_report(run_dir, world)


def weights_finite(trainer: GRPOTrainer) -> bool:
    """NaN-safety: no checkpoint or log ever holds weights an overflow has destroyed. Under
    torchrun each rank checks what it holds (its FSDP2 shards) and all agree."""
    local = all(
        bool((p.to_local() if isinstance(p, DTensor) else p).isfinite().all())
        for p in trainer.model.trainable_parameters()
    )
    return not trainer.parallel.world.any(not local)


def diverged(run_dir: Path, iteration: int) -> RunStopped:
    """Iteration `iteration` overflowed the weights: stop, keeping the last checkpoint."""
    found = find_checkpoint(run_dir / CHECKPOINT_DIR)
    kept = "no checkpoint" if found is None else f"the checkpoint of iteration {found.step}"
    return RunStopped(
        f"iteration {iteration} diverged (the trained weights are no longer finite); the run "
        f"stopped with {kept} kept; lower optim.lr (or sampling.eta, the KL or reward scales) "
        f"and continue with: videogrpo train --resume {run_dir} --set optim.lr=...",
        DIVERGED_EXIT_CODE,
    )


def finish_report(run_dir: Path, world: World) -> RunResult:
    """The last write of a run (rank 0's): report.html, from what the run directory holds."""
    from videogrpo.runs.report import write_report

    if world.is_main:
        write_report(run_dir)
    world.barrier()  # every rank returns rank 0's summary
    return RunResult(run_dir, json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8")))
