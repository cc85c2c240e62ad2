"""The training configuration: every setting of `videogrpo train`, with its meaning and default.

Defaults are the SAGE-GRPO recipe scaled to the embedded default model (ALGORITHMS §9-10); the
presets under configs/ set the baselines. Validation is by dataclasses (config_schema.py): a YAML
file plus `--set a.b=c` overrides become this typed tree or a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from videogrpo.config.schema import apply_override, from_dict, section, setting, to_dict
from videogrpo.errors import UserError

STEP_RULES = ("ode", "dance", "flow", "sage", "cps")
SELECTIONS = ("all", "first_k", "random_fraction", "window")
STD_MODES = ("group", "batch", "none")
KL_REFERENCES = ("none", "fixed", "moving", "stepwise", "dual")
KL_SCHEDULES = ("constant", "two_stage", "linear_ramp", "adaptive")
CURRICULA = ("static", "staged", "utility")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# torch seeds are 64-bit (below 2⁶⁴); the trainer derives run.seed + 1 and eval adds each
# sample's index to eval.seed, so seeds stop at 2⁶³ − 1 to leave that room.
MAX_SEED = 2**63 - 1
# torch.set_num_threads(10⁶) crashes OpenMP (measured); 1024 is more than any CPU has cores.
MAX_THREADS = 1024
# Flow-matching schedulers are trained on 1000 timesteps (num_train_timesteps = 1000 in every
# diffusers flow-matching config): finer grids add cost, not resolution.
MAX_STEPS = 1000
# An order of magnitude above the classifier-free guidance scales in use (Wan 2.1: 5,
# HunyuanVideo and CogVideoX: 6); far above, the guided velocity overflows to NaN videos.
MAX_GUIDANCE_SCALE = 100.0
# AdamW moves each weight by about lr per step; at lr > 1 no run converges (the tiny model's
# KL is NaN within one iteration at lr = 10⁴).
MAX_LEARNING_RATE = 1.0
# An order of magnitude above the exploration scales of the references (DanceGRPO 0.3, SAGE 0.5,
# FlowGRPO 0.7; CPS ≤ 1 by definition): at η = 10 one step's noise already dwarfs the latent,
# and at η = 10³⁰ the rollout overflows to NaN.
MAX_EXPLORATION_SCALE = 10.0
# AdamW multiplies each weight by 1 − lr · weight_decay per step: with lr ≤ 1, a decay ≤ 1 keeps
# that factor in [0, 1) (at 10³⁰ the weights overflow within one step).
MAX_WEIGHT_DECAY = 1.0
# Keys renamed since runs were first saved: old name → new name, per section.
RENAMED_KEYS = {"model": {"backbone": "type"}, "reward": {"name": "type"}}


@dataclass
class RunConfig:
    output_dir: str = setting("runs", "Parent folder of run directories.")
    name: str | None = setting(
        None, "Run directory name (one folder name); default: <preset>-<seed>-<timestamp>."
    )
    seed: int = setting(
        0,
        "Seed for prompts, noise, selection and initialisation: 0 … 2^63 − 1 (torch seeds are "
        "64-bit; the run also uses seed + 1).",
        ge=0,
        le=MAX_SEED,
    )
    iterations: int = setting(40, "Training iterations (one rollout + its updates each).", ge=1)
    eval_every: int = setting(
        0, "Held-out eval every N iterations (0: only at start and end).", ge=0
    )
    checkpoint_every: int = setting(
        10, "Checkpoint every N iterations (and always at the end).", ge=1
    )
    videos_every: int = setting(
        10, "Save a sample of rollout videos every N iterations (0: never).", ge=0
    )
    threads: int = setting(0, "torch CPU threads (0: torch's default).", ge=0, le=MAX_THREADS)


@dataclass
class ModelConfig:
    type: str = setting(
        "tiny_wan",
        "Backbone adapter: a built-in name (tiny_wan, wan, hunyuan_video_15, ltx) or your own "
        "as MODULE:CLASS.",
    )
    path: str | None = setting(
        None, "Model folder (a diffusers pipeline folder for wan, hunyuan_video_15, ltx)."
    )
    options: dict[str, Any] = setting({}, "Backbone-specific settings, passed to the adapter.")
    dtype: str = setting(
        "float32",
        "Compute dtype of the transformer; step and log-prob math stay float32 (full fine-tuning "
        "keeps float32 weights and runs the forward under autocast to this dtype).",
        choices=tuple(DTYPE_NAMES),
    )
    text_encoder_dtype: str = setting(
        "float32", "Dtype of the text encoder(s).", choices=tuple(DTYPE_NAMES)
    )
    vae_dtype: str = setting("float32", "Dtype of the VAE.", choices=tuple(DTYPE_NAMES))
    attention_backend: str | None = setting(
        None,
        "diffusers attention backend of the transformer (e.g. native, flash, _native_cudnn, "
        "sage); default: diffusers' own (PyTorch SDPA).",
    )
    compile: bool = setting(
        False, "torch.compile the transformer's repeated blocks (first iterations are slower)."
    )
    device: str = setting("auto", "auto (CUDA if present), cpu, cuda or cuda:N.")
    finetune: str = setting(
        "lora", "Train a LoRA adapter or all weights.", choices=("lora", "full")
    )
    lora_rank: int = setting(16, "LoRA rank.", ge=1)
    lora_alpha: float = setting(16.0, "LoRA alpha (scale = alpha / rank).", gt=0)
    lora_targets: list[str] | None = setting(
        None, "Module names the LoRA adapts (default: the backbone's attention and MLP)."
    )


@dataclass
class SamplingConfig:
    rule: str = setting("sage", "Exploration step rule (ALGORITHMS §2).", choices=STEP_RULES)
    eta: float = setting(
        0.5, "Exploration scale η (cps: in [0, 1]).", ge=0, le=MAX_EXPLORATION_SCALE
    )
    num_steps: int = setting(10, "Rollout denoising steps T.", ge=2, le=MAX_STEPS)
    shift: float = setting(3.0, "Schedule shift s (ALGORITHMS §1).", gt=0)
    guidance_scale: float = setting(
        1.0, "Classifier-free guidance w (1: off).", ge=1, le=MAX_GUIDANCE_SCALE
    )
    negative_prompt: str = setting(
        "", "Prompt of guidance's unconditional branch.", allow_empty=True
    )
    num_frames: int | None = setting(None, "Frames per video (default: the backbone's).", ge=1)
    height: int | None = setting(None, "Video height in pixels (default: the backbone's).", ge=1)
    width: int | None = setting(None, "Video width in pixels (default: the backbone's).", ge=1)
    sigma_clamp: float = setting(3e-3, "sage: clamp c keeping σ < 1 − c in the log.", gt=0, le=0.5)
    deterministic_last_step: bool = setting(
        True, "Use the ODE at the last step (its noise is never denoised and costs quality)."
    )


@dataclass
class SelectionConfig:
    strategy: str = setting("all", "Which steps are trained (ALGORITHMS §6).", choices=SELECTIONS)
    fraction: float = setting(0.6, "first_k / random_fraction: share of steps trained.", gt=0, le=1)
    window_size: int = setting(4, "window: SDE window length w.", ge=1)
    window_stride: int = setting(1, "window: steps the window moves each time.", ge=1)
    window_every: int = setting(25, "window: iterations between moves.", ge=1)


@dataclass
class DataConfig:
    prompts: str = setting(
        "train",
        "Training prompts: a world split name, or a prompt file: .txt (one per line), .jsonl "
        "(a prompt/caption/text key per line) or .csv (a prompt/caption/text column).",
    )
    order: str = setting(
        "random",
        "random: draw prompts independently each iteration; shuffle: go through the prompt "
        "file in a seeded random order, epoch after epoch (the position is resumed).",
        choices=("random", "shuffle"),
    )
    prompts_per_iteration: int = setting(8, "B: prompts per rollout.", ge=1)
    group_size: int = setting(4, "G: samples per prompt (a group).", ge=2)
    shared_initial_noise: bool = setting(
        False,
        "Start a group's samples from one noise (DanceGRPO), so they differ by the SDE alone.",
    )
    train_extremes: int = setting(
        0,
        "Train only the k highest and k lowest advantages of each group, the advantages "
        "computed over the whole group (DanceGRPO: 4 + 4 of 24); 0 trains every sample.",
        ge=0,
    )


@dataclass
class RewardConfig:
    type: str = setting(
        "world",
        "Reward model: world, videoalign, clipscore, pickscore, python or http (docs/rewards.md), "
        "or your own as MODULE:CLASS.",
    )
    options: dict[str, Any] = setting({}, "Keyword arguments of the reward's constructor.")
    batch_size: int = setting(0, "Videos per call of the reward (0: as many as decoded).", ge=0)
    additional: list[dict[str, Any]] = setting(
        [], "Further rewards, each {type, options, batch_size}; their components join the set."
    )
    weights: dict[str, float] = setting(
        {"vq": 0.5, "mq": 0.5, "ta": 1.0}, "Static component weights (SAGE setting B: 0.5/0.5/1.0)."
    )
    aggregation: str = setting(
        "sum",
        "Weight then normalise per group, or normalise each component per group then weight.",
        choices=("sum", "normalize_then_sum"),
    )
    curriculum: str = setting("static", "Reward weighting (ALGORITHMS §8).", choices=CURRICULA)
    order: list[str] = setting(
        ["vq", "mq", "ta"], "Curriculum order: visual fidelity, motion, then text alignment."
    )
    thresholds: list[float] | None = setting(
        None, "Competence gates τ in [0, 1] (default: the paper's 0.75 per gated component)."
    )
    temperature: float | None = setting(
        None, "Softness T of the gates (default: 0.05 staged, 1.0 utility).", gt=0
    )
    sharpness: float = setting(1.0, "utility: slope k of sigmoid(k·(m − τ)).", gt=0)
    beta: float = setting(0.3, "utility: weight β of the Hoyer-sparsity term.", ge=0)
    competence: str = setting(
        "ema", "Competence of the current group, or an EMA over batches.", choices=("group", "ema")
    )
    ema_decay: float = setting(0.9, "Decay of the competence EMA.", ge=0, le=0.999)
    normalization: str = setting(
        "fixed",
        "Map components to [0, 1] with fixed lo/hi or calibrate them.",
        choices=("fixed", "calibrate"),
    )
    lo: float | dict[str, float] = setting(
        0.0, "Fixed normalisation: score mapped to 0; one number, or one per component."
    )
    hi: float | dict[str, float] = setting(
        1.0, "Fixed normalisation: score mapped to 1; one number, or one per component."
    )
    calibration_iterations: int = setting(
        10, "calibrate: iterations whose rewards set lo/hi.", ge=1
    )

    max_failed_fraction: float = setting(
        0.5,
        "Stop the run (after a checkpoint) when more than this share of an iteration's samples "
        "has no score for reward.max_failed_iterations iterations in a row.",
        ge=0,
        le=1,
    )
    max_failed_iterations: int = setting(
        3, "Consecutive iterations above reward.max_failed_fraction that stop the run.", ge=1
    )

    def composite_components(self) -> list[str]:
        """What "composite" averages in eval and logs: the components the training weighs
        (not, e.g., VideoAlign's Overall, which is their sum)."""
        return list(self.weights) if self.curriculum == "static" else list(self.order)


@dataclass
class AdvantageConfig:
    std: str = setting(
        "group", "Normalise by the group's std, the batch's, or not.", choices=STD_MODES
    )
    eps: float = setting(1e-6, "Floor of the std (ALGORITHMS §5).", gt=0)
    clip: float = setting(5.0, "Clip advantages to ±clip.", gt=0)


@dataclass
class PolicyConfig:
    clip_range: float = setting(1e-4, "PPO ratio clip ε_c (ALGORITHMS §6).", gt=0)
    log_prob_reduction: str = setting(
        "mean",
        "Per-element mean (references) or sum of the Gaussian log-density.",
        choices=("mean", "sum", "cps_unnormalized"),
    )
    equalizer: bool = setting(True, "Gradient norm equalizer factors S_k (ALGORITHMS §4).")


@dataclass
class KLConfig:
    reference: str = setting("dual", "KL reference (ALGORITHMS §7).", choices=KL_REFERENCES)
    anchor_every: int = setting(10, "Moving anchor refresh period N in optimizer steps.", ge=1)
    beta_pos: float = setting(1.0, "dual: weight of the moving-anchor KL.", ge=0)
    beta_vel: float = setting(0.1, "dual: weight of the step-wise KL.", ge=0)
    normalizer: str = setting(
        "step_variance",
        "Gaussian KL denominator: the step variance Σ_k + 1e-6 (SAGE) or FlowGRPO's "
        "std_dev_t² = η²σ/(1 − σ) without the step length (flow_grpo train_sd3.py).",
        choices=("step_variance", "flowgrpo"),
    )
    stepwise_estimator: str = setting(
        "k1",
        "Step-wise KL: k1 from log-probs or analytic from stored means.",
        choices=("k1", "analytic"),
    )
    schedule: str = setting("adaptive", "Coefficient λ_t schedule.", choices=KL_SCHEDULES)
    coef: float = setting(1e-5, "constant λ; two_stage/linear_ramp: final λ.", ge=0)
    coef_start: float = setting(1e-7, "two_stage/linear_ramp/adaptive: initial λ (λ_min).", ge=0)
    coef_max: float = setting(1e-5, "adaptive: upper bound λ_max.", ge=0)
    switch_steps: int = setting(100, "two_stage: switch step; ramps: ramp length.", ge=0)
    target: float = setting(
        1e-5, "adaptive: KL target (separate from λ_max; official SAGE: 1e-5).", gt=0
    )
    controller_clock: str = setting(
        "sample_step",
        "When λ_t updates: at every trained (sample, step) pair with that pair's KL (official "
        "SAGE), or once per optimizer step with the step's mean KL.",
        choices=("sample_step", "optimizer_step"),
    )
    window: int = setting(10, "adaptive: KL values averaged per decision.", ge=1)


@dataclass
class OptimConfig:
    lr: float = setting(3e-4, "AdamW learning rate.", gt=0, le=MAX_LEARNING_RATE)
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0, le=MAX_WEIGHT_DECAY)
    beta1: float = setting(0.9, "AdamW β1.", ge=0, le=1)
    beta2: float = setting(0.999, "AdamW β2.", ge=0, le=1)
    grad_clip: float = setting(1.0, "Gradient-norm clip.", gt=0)
    inner_epochs: int = setting(1, "Passes over each rollout.", ge=1)
    minibatches: int = setting(1, "Optimizer steps per pass (minibatches of samples).", ge=1)
    warmup_iterations: int = setting(0, "Linear LR warm-up, in iterations.", ge=0)


@dataclass
class MemoryConfig:
    decode_batch_size: int = setting(
        8, "Latents decoded (and videos held for the reward) at once.", ge=1
    )
    trajectory_device: str = setting(
        "model",
        "Where rollout states are kept between rollout and update.",
        choices=("model", "cpu"),
    )
    micro_batch_size: int = setting(
        0,
        "Samples per transformer call in rollout, replay and update (0: every sample of a "
        "minibatch that trains the step at once); the update accumulates gradients over them, "
        "so only activation memory and speed change (with CFG the transformer sees twice as "
        "many rows).",
        ge=0,
    )
    offload: bool = setting(
        True,
        "Keep text encoders and VAE on the CPU and move each to the training device only for "
        "its phase (encode, decode), so the update has the GPU to itself.",
    )
    gradient_checkpointing: bool = setting(
        False, "Recompute transformer blocks in the backward pass: far less activation memory."
    )
    vae_slicing: bool = setting(False, "Decode the videos of a batch one at a time.")
    vae_tiling: bool = setting(
        False, "Decode in overlapping spatial tiles (large videos; pixels change slightly)."
    )
    text_cache_dir: str | None = setting(
        None,
        "Folder where prompt embeddings are stored (safetensors, keyed by text encoder and "
        "prompt): every prompt is encoded once at the start and reused by later runs; "
        "default: in memory only, encoded when first drawn.",
    )


@dataclass
class EvalConfig:
    prompts: str = setting(
        "heldout", "Eval prompts: a world split name or a prompt file (.txt, .jsonl, .csv)."
    )
    max_prompts: int = setting(0, "Use at most this many eval prompts (0: all).", ge=0)
    samples_per_prompt: int = setting(2, "Fixed seeds per eval prompt.", ge=1)
    num_steps: int = setting(10, "ODE steps for eval.", ge=1, le=MAX_STEPS)
    seed: int = setting(
        1234,
        "Base seed of the fixed eval noise: 0 … 2^63 − 1 (sample i uses seed + i).",
        ge=0,
        le=MAX_SEED,
    )
    videos: int = setting(8, "Eval videos saved for the before/after grid.", ge=0)
    batch_size: int = setting(64, "Samples per model call during eval.", ge=1)


@dataclass
class DistributedConfig:
    strategy: str = setting(
        "auto",
        "Under torchrun: ddp keeps a model copy per rank, fsdp shards weights, gradients and "
        "optimizer state (FSDP2); auto: ddp for LoRA, fsdp for full fine-tuning.",
        choices=("auto", "ddp", "fsdp"),
    )
    backend: str = setting(
        "auto",
        "Under torchrun: nccl (GPUs) or gloo (CPUs); auto picks the one the machine runs.",
        choices=("auto", "gloo", "nccl"),
    )


@dataclass
class TrainConfig:
    run: RunConfig = section(RunConfig)
    model: ModelConfig = section(ModelConfig)
    sampling: SamplingConfig = section(SamplingConfig)
    selection: SelectionConfig = section(SelectionConfig)
    data: DataConfig = section(DataConfig)
    reward: RewardConfig = section(RewardConfig)
    advantage: AdvantageConfig = section(AdvantageConfig)
    policy: PolicyConfig = section(PolicyConfig)
    kl: KLConfig = section(KLConfig)
    optim: OptimConfig = section(OptimConfig)
    memory: MemoryConfig = section(MemoryConfig)
    eval: EvalConfig = section(EvalConfig)
    distributed: DistributedConfig = section(DistributedConfig)

    def __post_init__(self) -> None:
        """Cross-field checks: each names the keys involved and the fix."""
        if self.sampling.rule == "cps" and self.sampling.eta > 1:
            raise UserError(
                f"sampling.eta: {self.sampling.eta} is out of range for cps; use [0, 1]"
            )
        if self.sampling.rule == "ode" or self.sampling.eta == 0:
            raise UserError(
                "sampling: an ODE rollout has no log-probabilities to train; "
                "set sampling.rule to dance/flow/sage/cps and sampling.eta > 0"
            )
        batch = self.data.prompts_per_iteration * self.data.group_size
        if batch % self.optim.minibatches:
            raise UserError(
                f"optim.minibatches: {self.optim.minibatches} does not divide the batch of "
                f"{batch} samples (data.prompts_per_iteration × data.group_size)"
            )
        if 2 * self.data.train_extremes > self.data.group_size:
            raise UserError(
                f"data.train_extremes: {self.data.train_extremes} best + "
                f"{self.data.train_extremes} worst exceed data.group_size {self.data.group_size}"
            )
        if self.kl.coef_start > self.kl.coef_max:
            raise UserError(
                f"kl.coef_start: {self.kl.coef_start} exceeds kl.coef_max {self.kl.coef_max}"
            )
        if not self.reward.weights:
            raise UserError("reward.weights: give at least one component weight, e.g. {ta: 1.0}")
        if not self.reward.order:
            raise UserError("reward.order: list at least one component, e.g. [vq, mq, ta]")
        if self.model.lora_targets is not None and not self.model.lora_targets:
            raise UserError("model.lora_targets: list at least one module name, or null")
        name = self.run.name
        if name is not None and (name in (".", "..") or "/" in name or "\\" in name):
            raise UserError(
                f"run.name: {name!r} must be one folder name (no '/', not . or ..); the parent "
                "folder is run.output_dir"
            )
        for threshold in self.reward.thresholds or []:
            if not 0.0 <= threshold <= 1.0:
                raise UserError(f"reward.thresholds: {threshold} is outside [0, 1]")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML preset (or the defaults), apply `a.b=value` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            is_file = path.is_file()
        except OSError:  # e.g. a name too long for the file system
            is_file = False
        if not is_file:
            raise UserError(f"config file {str(path)!r} not found; see configs/ for the presets")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise UserError(f"config file {str(path)!r} cannot be read ({reason})") from error
        except yaml.YAMLError as error:
            reason = " ".join(str(error).split())  # one line: the CLI prints errors as one
            raise UserError(f"config file {str(path)!r} is not valid YAML: {reason}") from error
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must be a mapping of sections, e.g. optim: ...")
    # Overrides land on the defaults, so `--set reward.weights.ta=2` changes one weight and
    # keeps the others; a section in the file replaces only the settings it names.
    resolved = to_dict(TrainConfig())
    for name, values in data.items():
        if isinstance(values, dict) and isinstance(resolved.get(name), dict):
            resolved[name].update(values)
        else:
            resolved[name] = values
    for assignment in overrides or []:
        apply_override(resolved, assignment)
    for section_name, renames in RENAMED_KEYS.items():
        section_values = resolved.get(section_name)
        for old, new in renames.items():
            if isinstance(section_values, dict) and old in section_values:
                section_values[new] = section_values.pop(old)
    return from_dict(TrainConfig, resolved)


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
