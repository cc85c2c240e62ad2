"""`reward.type: videoalign`: VideoAlign's VideoReward model, VQ / MQ / TA (and Overall).

VideoReward (KwaiVGI/VideoAlign, arXiv 2501.13918) is Qwen2-VL-2B with a linear head on the
hidden states: the prompt ("detailed_special", assets/videoalign_prompt.txt, the text the model
was trained on) holds three special tokens, and the head's output at `<|VQ_reward|>`,
`<|MQ_reward|>` and `<|TA_reward|>` is the visual-quality, motion-quality and text-alignment
score. As in the reference's inference, each is z-normalised with the checkpoint's
inference_config (mean, std) and Overall is their sum.

Differences from the reference, none of which changes a score: frames come from memory (the
rollout's decoded videos, rounded to 8 bits as a video file would hold them; no mp4 round trip,
so no codec loss either), preprocessing is plain torch (videoalign_inputs.py), the model runs on
transformers 5 (keys renamed, see videoalign_checkpoint.py) with explicit 1-D positions — the
reference calls the language model without the 3-D M-RoPE positions, and transformers 5 would
otherwise build them — and a whole batch goes through one forward, right-padded as the
reference's processor pads.

Options: `path` (the VideoReward folder), `base_model` (the Qwen2-VL-2B-Instruct folder it was
trained from: its config.json, its tokenizer when the checkpoint has none, its weights for a
LoRA checkpoint; default: model_config.json's model_name_or_path when that is a local folder),
`video_fps` (frame rate of the scored videos, for the 2-per-second frame sampling; default 16,
Wan 2.1's), `checkpoint` (a step; default the latest), `normalize`, `device`, `dtype` (auto:
bfloat16 on a GPU, float32 on the CPU).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

import torch
from torch import Tensor, nn

from videogrpo.errors import UserError
from videogrpo.rewards.frames import check_batch, to_uint8
from videogrpo.rewards.placement import resolve_device, resolve_dtype
from videogrpo.rewards.videoalign_checkpoint import (
    VideoRewardFolder,
    open_folder,
    reward_state_dict,
)
from videogrpo.rewards.videoalign_inputs import (
    MERGE_SIZE,
    VIDEO_PAD,
    FrameSettings,
    chat_text,
    video_patches,
)

SCORES = ("VQ", "MQ", "TA")
COMPONENTS = (*SCORES, "Overall")
REWARD_TOKENS = tuple(f"<|{name}_reward|>" for name in SCORES)
PROMPT_TEMPLATE = "detailed_special"  # the only template whose tokens the head reads
PROMPT_FILE = "videoalign_prompt.txt"
EMBEDDINGS = "backbone.language_model.embed_tokens.weight"
# torch's message on weights that do not fit lists every key; the first ones say enough.
LOAD_ERROR_CHARACTERS = 300
HEAD = "rm_head.weight"
# Wan 2.1's output frame rate: the usual generator behind VideoAlign rewards.
DEFAULT_VIDEO_FPS = 16.0
# VideoAlign's DataConfig defaults, for a model_config.json that leaves them out.
REFERENCE_FPS = 2.0
REFERENCE_MAX_PIXELS = 240 * 320


@cache
def _template() -> str:
    return files("videogrpo.rewards").joinpath("assets", PROMPT_FILE).read_text()


def question(prompt: str) -> str:
    """The reference's detailed_special text for one generation prompt."""
    return _template().replace("{text_prompt}", prompt)


class VideoRewardNet(nn.Module):
    """Qwen2-VL's vision tower and language model, and the reward head on its hidden states."""

    def __init__(self, config, output_dim: int, reward_token_ids: tuple[int, ...]) -> None:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

        super().__init__()
        self.backbone = Qwen2VLModel(config)
        self.rm_head = nn.Linear(config.text_config.hidden_size, output_dim, bias=False)
        self.reward_token_ids = reward_token_ids

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, patches: Tensor, grids: Tensor
    ) -> Tensor:
        """(B, 3) raw scores: the head at each reward token (its own column when the head has
        one output per score, as in the published checkpoint)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions.expand(input_ids.shape[0], -1),
            pixel_values_videos=patches,
            video_grid_thw=grids,
            use_cache=False,
        ).last_hidden_state
        columns = []
        for index, token_id in enumerate(self.reward_token_ids):
            at_token = (input_ids == token_id).float().argmax(dim=1)
            head = self.rm_head(hidden[torch.arange(len(hidden)), at_token]).float()
            columns.append(head[:, index] if head.shape[1] == len(SCORES) else head[:, 0])
        return torch.stack(columns, dim=1)


def _base_folder(folder: VideoRewardFolder, base_model: str | None) -> Path:
    named = base_model or folder.section("model_config").get("model_name_or_path") or ""
    base = Path(named).expanduser()
    if not (base / "config.json").is_file():
        raise UserError(
            f"reward.options.base_model: VideoAlign needs the local Qwen2-VL folder its "
            f"checkpoint was trained from ({named!r} has no config.json); download it, e.g. "
            "Qwen/Qwen2-VL-2B-Instruct, and set reward.options.base_model=PATH"
        )
    return base


def _check_config(folder: VideoRewardFolder) -> None:
    data, model = folder.section("data_config"), folder.section("model_config")
    problems = []
    if data.get("prompt_template_type") != PROMPT_TEMPLATE:
        problems.append(f"prompt_template_type {data.get('prompt_template_type')!r}")
    if data.get("sample_type", "uniform") != "uniform":
        problems.append(f"sample_type {data.get('sample_type')!r}")
    if not model.get("use_special_tokens") or model.get("reward_token") != "special":
        problems.append("a head not read at the special reward tokens")
    if problems:
        raise UserError(
            f"reward.options.path: {folder.root / 'model_config.json'} sets "
            f"{', '.join(problems)}; this reward reads VideoReward's {PROMPT_TEMPLATE!r} "
            "checkpoints (uniform frames, special reward tokens)"
        )


def _normalization(folder: VideoRewardFolder) -> dict[str, float]:
    """The checkpoint's inference_config means and stds; none means raw scores, as in the
    reference."""
    config = folder.section("inference_config")
    if not config:
        return {}
    keys = [f"{name}_{statistic}" for name in SCORES for statistic in ("mean", "std")]
    bad = [key for key in keys if not isinstance(config.get(key), int | float)]
    bad += [f"{name}_std" for name in SCORES if config.get(f"{name}_std") == 0]
    if bad:
        raise UserError(
            f"reward.options.path: inference_config of {folder.root / 'model_config.json'} has "
            f"no usable {', '.join(bad)}; fix it or set reward.options.normalize=false"
        )
    return {key: float(config[key]) for key in keys}


def _tokenizer(folder: VideoRewardFolder, base: Path):
    """The checkpoint's tokenizer, else the base's with the reward tokens added as VideoAlign
    adds them (appended, so their ids follow the base vocabulary)."""
    from transformers import AutoTokenizer

    saved = folder.checkpoint / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(saved if saved.is_dir() else base)
    missing = [t for t in REWARD_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    tokenizer.padding_side = "right"
    return tokenizer


def _reward_model(
    folder: VideoRewardFolder, base: Path, tokenizer, dtype: torch.dtype
) -> VideoRewardNet:
    """The checkpoint's weights in a VideoRewardNet built to the base model's config."""
    from accelerate import init_empty_weights
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig.from_pretrained(base)
    if config.model_type != "qwen2_vl":
        raise UserError(
            f"reward.options.base_model: {base} holds a {config.model_type!r} model; "
            "VideoReward is trained from Qwen2-VL (Qwen/Qwen2-VL-2B-Instruct)"
        )
    state = reward_state_dict(folder, base)
    for key in (EMBEDDINGS, HEAD):
        if key not in state:
            raise UserError(f"reward.options.path: {folder.checkpoint} has no weight {key}")
    config.text_config.vocab_size = state[EMBEDDINGS].shape[0]  # resized for the reward tokens
    video_pad_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    if video_pad_id != config.video_token_id:
        raise UserError(
            f"reward.options.base_model: the tokenizer's {VIDEO_PAD} is id {video_pad_id}, "
            f"the model's video token {config.video_token_id}; they must be one model's"
        )
    token_ids = tuple(tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS)))
    output_dim = state[HEAD].shape[0]
    if output_dim not in (1, len(SCORES)):
        raise UserError(
            f"reward.options.path: the head of {folder.checkpoint} has {output_dim} outputs; "
            f"VideoAlign reads 1 per reward token or 1 per score ({len(SCORES)})"
        )
    with init_empty_weights():  # no random init of two billion weights about to be replaced
        model = VideoRewardNet(config, output_dim, token_ids)
    state = {key: value.to(dtype) for key, value in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:  # missing, unexpected or mis-shaped weights
        reason = " ".join(str(error).split())[:LOAD_ERROR_CHARACTERS]
        raise UserError(
            f"reward.options.path: {folder.checkpoint} does not fit the base model "
            f"{base} ({reason})"
        ) from error
    return model


class VideoAlign:
    """VideoReward's VQ, MQ, TA and Overall for a batch of videos in memory."""

    components: tuple[str, ...] = COMPONENTS

    def __init__(
        self,
        path: str,
        base_model: str | None = None,
        video_fps: float = DEFAULT_VIDEO_FPS,
        checkpoint: int | None = None,
        normalize: bool = True,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        if video_fps <= 0:
            raise UserError(f"reward.options.video_fps: {video_fps} must be > 0")
        folder = open_folder(path, checkpoint)
        _check_config(folder)
        base = _base_folder(folder, base_model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device, "bfloat16")
        self.video_fps = float(video_fps)
        data = folder.section("data_config")
        num_frames = data.get("num_frames")
        self.frames = FrameSettings(
            fps=None if num_frames else float(data.get("fps", REFERENCE_FPS)),
            num_frames=int(num_frames) if num_frames else None,
            max_pixels=int(data.get("max_frame_pixels", REFERENCE_MAX_PIXELS)),
        )
        self.normalization = _normalization(folder) if normalize else {}

        self.tokenizer = _tokenizer(folder, base)
        model = _reward_model(folder, base, self.tokenizer, self.dtype)
        self.model = model.to(self.device).eval().requires_grad_(False)

    def inputs(self, videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        """Token ids, attention mask, vision patches and grids of a batch (CPU tensors)."""
        check_batch(videos, prompts)
        patches, grids, texts = [], [], []
        for video, prompt in zip(to_uint8(videos), prompts, strict=True):
            pixels, grid = video_patches(video, self.video_fps, self.frames)
            patches.append(pixels)
            grids.append(grid)
            tokens = grid[0] * grid[1] * grid[2] // MERGE_SIZE**2
            texts.append(chat_text(question(prompt), tokens))
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt")
        for token_id in self.model.reward_token_ids:
            if not ((encoded["input_ids"] == token_id).sum(dim=1) == 1).all():
                raise ValueError(f"token id {token_id} is not once in every VideoAlign question")
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "patches": torch.cat(patches),
            "grids": torch.tensor(grids),
        }

    @torch.no_grad()
    def __call__(self, videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        batch = self.inputs(videos, prompts)
        raw = self.model(
            batch["input_ids"].to(self.device),
            batch["attention_mask"].to(self.device),
            batch["patches"].to(self.device, self.dtype),
            batch["grids"].to(self.device),
        ).cpu()
        scores = {}
        for index, name in enumerate(SCORES):
            values = raw[:, index]
            if self.normalization:
                values = (values - self.normalization[f"{name}_mean"]) / self.normalization[
                    f"{name}_std"
                ]
            scores[name] = values
        scores["Overall"] = scores["VQ"] + scores["MQ"] + scores["TA"]
        return scores
