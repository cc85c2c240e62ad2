"""Loading what a run uses: the backbone (one process or one rank of a torchrun job), the reward,
and a finished run's weights for eval and sampling. Every bad path or setting is a one-line
`UserError` before anything is written."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from videogrpo.config import TrainConfig, load_config
from videogrpo.distributed.layout import check_batch_layout
from videogrpo.distributed.parallel import ONE_PROCESS, Parallel, parallelize
from videogrpo.distributed.world import World
from videogrpo.errors import UserError
from videogrpo.models.base import VideoGenerator
from videogrpo.models.registry import build_model, enable_training, resolve_device
from videogrpo.rewards.base import RewardModel
from videogrpo.rewards.registry import build_reward, effective_weights
from videogrpo.runs.checkpoint import find_checkpoint, load_checkpoint
from videogrpo.runs.ranks import trained_weights
from videogrpo.runs.resources import check_lora_rank
from videogrpo.runs.resume import CHECKPOINT_DIR, CONFIG_FILE, MAX_REASON_CHARS
from videogrpo.runs.rundir import check_input_path

logger = logging.getLogger(__name__)


def load_model(config: TrainConfig) -> VideoGenerator:
    """The configured backbone with its trainable part (LoRA or full) switched on."""
    return enable_training(build_checked(config), config.model)


def build_checked(config: TrainConfig) -> VideoGenerator:
    """The configured backbone, once its path and LoRA rank are known to fit."""
    check_input_path(config.model.path, "model.path")
    model = build_model(config.model, config.sampling, config.memory)
    if config.model.finetune == "lora":
        check_lora_rank(model, config.model.lora_rank)
    return model


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
    return parallelize(build_checked(config), config.model, config.distributed.strategy, world)


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
    check_input_path(model_config.path, "--model" if model_dir is not None else "model.path")
    model = build_model(model_config, config.sampling)
    if run_dir is not None:
        apply_run_weights(model, Path(run_dir))
    return model


def read_run_config(run_dir: Path) -> TrainConfig:
    if not (run_dir / CONFIG_FILE).is_file() or find_checkpoint(run_dir / CHECKPOINT_DIR) is None:
        raise UserError(f"{run_dir} is not a run directory with a checkpoint")
    return load_config(run_dir / CONFIG_FILE)


def apply_run_weights(model: VideoGenerator, run_dir: Path) -> None:
    """Give a freshly loaded base model the latest trained weights of a run (of any number of
    ranks)."""
    enable_training(model, read_run_config(run_dir).model)
    loaded = load_checkpoint(run_dir / CHECKPOINT_DIR)
    assert loaded is not None, "read_run_config found it"
    try:
        model.load_trainable_state_dict(trained_weights(loaded[0], loaded[1].path))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:MAX_REASON_CHARS]
        raise UserError(
            f"the weights in {loaded[1].path} do not fit this model ({reason})"
        ) from error
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
