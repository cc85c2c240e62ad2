"""A backbone and a reward that live outside the package, plugged in by the config alone.

Guards issue 12's "a new backbone or reward really is one file": both classes are defined in
this test file and named as `test_plugins:ToyBackbone` / `test_plugins:ToyReward` (the test
module is importable under that name), or by file path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import PRESETS_DIR
from torch import Tensor, nn

from videogrpo.errors import UserError
from videogrpo.models.base import Conditioning, ModelSpec, guided_velocity
from videogrpo.runs.train import train

LATENT_SHAPE = (2, 3, 4, 4)  # (C, F, H, W)
TEXT_DIM = 8


class ToyBackbone(nn.Module):
    """A VideoGenerator in 40 lines: a 1×1×1 conv velocity with a bag-of-characters text code."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.options.get("seed", 0)))
            self.net = nn.Conv3d(LATENT_SHAPE[0] + TEXT_DIM, LATENT_SHAPE[0], kernel_size=1)
        self.net.requires_grad_(False)
        self._reference: dict[str, Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.net.weight.device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return LATENT_SHAPE

    def encode(self, prompts: list[str], negative_prompt: str = "") -> Conditioning:
        def code(text: str) -> Tensor:
            counts = torch.zeros(TEXT_DIM)
            for char in text:
                counts[ord(char) % TEXT_DIM] += 1.0
            return counts / max(1, len(text))

        text = torch.stack([code(p) for p in prompts])
        negative = code(negative_prompt).expand(len(prompts), TEXT_DIM)
        return Conditioning({"text": text, "negative_text": negative})

    def velocity(self, latents, sigma, conditioning, guidance_scale):
        return guided_velocity(self._forward, latents, sigma, conditioning, guidance_scale)

    def _forward(self, latents: Tensor, sigma: Tensor, fields) -> Tensor:
        text = fields["text"][:, :, None, None, None].expand(-1, -1, *latents.shape[2:])
        return self.net(torch.cat([latents, text], dim=1)) * (1 + sigma.reshape(-1, 1, 1, 1, 1))

    def decode(self, latents: Tensor) -> Tensor:
        """Channel 0 → red, 1 → green, their mean → blue; (B, F, H, W, 3) in [0, 1]."""
        rgb = torch.stack([latents[:, 0], latents[:, 1], latents.mean(1)], dim=-1)
        return torch.sigmoid(rgb)

    def enable_lora(self, rank, alpha, target_modules=None, dropout=0.0) -> None:
        raise NotImplementedError("the toy backbone trains all its weights")

    def enable_full_finetuning(self) -> None:
        self.net.requires_grad_(True)
        self._reference = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @contextmanager
    def reference_policy(self) -> Iterator[None]:
        policy = self.trainable_state_dict()
        self.net.load_state_dict(self._reference)
        try:
            yield
        finally:
            self.load_trainable_state_dict(policy)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.named_parameters() if v.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(state[name])

    def save_lora(self, directory) -> None:
        raise NotImplementedError("no LoRA to save")

    def save_pretrained(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "weights.json").write_text(json.dumps(self.net.weight.tolist()))


class ToyReward:
    """Brightness of the clip's red channel: one component, `red`, in [0, 1]."""

    components = ("red",)

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        return {"red": self.scale * videos[..., 0].mean(dim=(1, 2, 3))}


def toy_settings(output_dir: Path, model_type: str, reward_type: str) -> list[str]:
    return [
        f"model.type={model_type}",
        "model.options={seed: 3}",
        "model.finetune=full",
        f"reward.type={reward_type}",
        "reward.options={scale: 1.0}",
        f"run.output_dir={output_dir}",
        "run.name=toy",
        "run.iterations=2",
        "run.videos_every=1",
        "optim.lr=0.05",
        "sampling.num_steps=4",
        "data.prompts_per_iteration=2",
        "data.group_size=2",
        "eval.max_prompts=2",
        "eval.num_steps=2",
        "eval.videos=1",
    ]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("by", ["module", "file"])
def test_a_toy_backbone_and_reward_from_this_file_train_two_iterations(tmp_path, by, caplog):
    """sage (full fine-tuning, dual KL) on plugins named through the config alone; the presets'
    vq/mq/ta weights name nothing the toy reward returns, so its one component gets weight 1
    (with a notice)."""
    prefix = __name__ if by == "module" else str(Path(__file__))
    settings = toy_settings(tmp_path, f"{prefix}:ToyBackbone", f"{prefix}:ToyReward")
    with caplog.at_level(logging.WARNING, logger="videogrpo"):
        result = train(PRESETS_DIR / "sage.yaml", settings, progress=False)
    assert any("weighting its components red equally" in r.message for r in caplog.records)
    summary = result.summary
    assert summary["iterations"] == 2
    assert summary["eval_before"].keys() == summary["eval_after"].keys() == {"red", "composite"}
    assert summary["eval_after"] != summary["eval_before"]  # the weights moved
    assert summary["config"]["reward"]["weights"] == {"red": 1.0}
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert all(m["optim/steps"] == 2 and m["policy/ratio_mean"] > 0 for m in metrics)
    assert (result.run_dir / "model" / "weights.json").is_file()
    assert len(list((result.run_dir / "rollouts" / "iter_000001").glob("*.gif"))) == 4


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.type=no_such_backbone", r"model.type: 'no_such_backbone' is not known.*tiny_wan"),
        ("model.type=no_such_module:Thing", r"cannot import 'no_such_module'"),
        (f"model.type={__name__}:Missing", r"has no 'Missing'"),
        ("reward.type=nope.py:Reward", r"file 'nope.py' not found"),
        ("reward.options={colour: 1}", r"rejects its options"),
        (f"reward.type={__name__}:ToyBackbone", r"rejects its options|is not a reward"),
    ],
)
def test_unknown_or_broken_plugins_are_one_line_errors_before_anything_is_written(
    tmp_path, setting, message
):
    settings = toy_settings(tmp_path, f"{__name__}:ToyBackbone", f"{__name__}:ToyReward")
    with pytest.raises(UserError, match=message) as error:
        train(PRESETS_DIR / "sage.yaml", [*settings, setting], progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "toy").exists()


class ColoursAndTheirSum:
    """Two components and their sum, as VideoAlign returns VQ, MQ, TA and Overall."""

    components = ("red", "blue", "Overall")

    def __call__(self, videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        red, blue = videos[..., 0].mean(dim=(1, 2, 3)), videos[..., 2].mean(dim=(1, 2, 3))
        return {"red": red, "blue": blue, "Overall": red + blue}


def test_the_composite_averages_only_the_weighted_components():
    """The eval yardstick is the mean of what the training weighs, not of a sum component too."""
    from videogrpo.config import load_config
    from videogrpo.runs.evaluation import evaluate
    from videogrpo.training.build import eval_step_settings

    config = load_config(None, ["reward.weights={red: 1.0, blue: 2.0}"])
    assert config.reward.composite_components() == ["red", "blue"]
    result = evaluate(
        ToyBackbone(ModelSpec()), ColoursAndTheirSum(), ["a", "b"], eval_step_settings(2, 3.0, 1.0),
        composite_of=config.reward.composite_components(),
    )  # fmt: skip
    rewards = result.rewards
    torch.testing.assert_close(rewards["composite"], (rewards["red"] + rewards["blue"]) / 2)
