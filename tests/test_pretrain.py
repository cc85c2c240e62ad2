"""`videogrpo pretrain`: a stopped-and-resumed run equals an uninterrupted one; output loads."""

import json

import pytest
import torch

from videogrpo.embedded.pretrain import PretrainConfig, learning_rate, pretrain
from videogrpo.embedded.tiny_wan import TinyWan
from videogrpo.errors import UserError

TINY = dict(batch_size=2, eval_every=1000, eval_prompts=2, eval_steps=2, checkpoint_every=1000)


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return dict(TinyWan.from_pretrained(model_dir).state_dict())


def test_resume_continues_exactly(tmp_path):
    """Data stream, optimizer, EMA and RNG all resume: weights equal an uninterrupted run's.

    Both runs stay inside the LR warm-up, where the rate does not depend on the total steps,
    so the first run can stop after 2 steps and the resumed one go on to 3.
    """
    straight = pretrain(PretrainConfig(output=str(tmp_path / "a"), steps=3, **TINY))
    pretrain(PretrainConfig(output=str(tmp_path / "b"), steps=2, **TINY))
    resumed = pretrain(PretrainConfig(output=str(tmp_path / "b"), steps=3, **TINY), resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    provenance = json.loads((resumed / "provenance.json").read_text())
    assert provenance["steps"] == 3
    assert {"vq", "mq", "ta", "composite"} <= provenance["heldout_eval_ode"].keys()


def test_refuses_to_overwrite_or_resume_nothing(tmp_path):
    with pytest.raises(UserError, match="--resume"):
        pretrain(PretrainConfig(output=str(tmp_path), steps=1, **TINY))
        pretrain(PretrainConfig(output=str(tmp_path), steps=1, **TINY))
    with pytest.raises(UserError, match="nothing to resume"):
        pretrain(PretrainConfig(output=str(tmp_path / "new"), steps=1, **TINY), resume=True)


def test_learning_rate_warms_up_then_decays_to_its_floor():
    config = PretrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_fraction=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 100) == pytest.approx(0.1)
    assert learning_rate(config, 50) < learning_rate(config, 20)
