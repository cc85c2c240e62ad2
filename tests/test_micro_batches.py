"""memory.micro_batch_size: the transformer sees at most that many samples per call in rollout,
replay and update, the first replay stays bitwise (ratio 1), and the update's gradient is the
one of the whole batch (the pieces' losses are weighted by their share of the pairs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_trainer
from test_trainer import ReplayLog

from videogrpo.training import trainer as trainer_module
from videogrpo.training.update import policy_update

pytestmark = pytest.mark.usefixtures("one_thread")


def test_calls_are_split_and_the_first_replay_stays_exact(tiny_model_dir, tmp_path, monkeypatch):
    log = ReplayLog(monkeypatch)
    trainer = make_trainer(
        tiny_model_dir, tmp_path, "sage", ["memory.micro_batch_size=1", "optim.minibatches=1"]
    )
    sizes = []
    velocity = trainer.model.velocity

    def recorded(latents, *args, **kwargs):
        sizes.append(latents.shape[0])
        return velocity(latents, *args, **kwargs)

    monkeypatch.setattr(trainer.model, "velocity", recorded)
    metrics = trainer.step().metrics
    assert set(sizes) == {1}
    assert metrics["policy/ratio_mean"] == 1.0 and metrics["policy/ratio_max"] == 1.0
    (calls,) = log.minibatches(0)
    for log_prob, old_log_prob in calls:
        assert torch.equal(log_prob, old_log_prob)


def test_the_update_gradient_does_not_depend_on_the_micro_batch_size(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The same stored rollout, updated once whole and once 1 sample at a time: equal gradients
    (1e-6 relative: only the order in which float32 partial sums accumulate differs)."""
    captured = {}

    def capture(model, optimizer, batch, settings, *args, **kwargs):
        captured.update(batch=batch, settings=settings, args=args, kwargs=kwargs)
        return {}

    trainer = make_trainer(tiny_model_dir, tmp_path, "flowgrpo", ["optim.minibatches=1"])
    monkeypatch.setattr(trainer_module, "policy_update", capture)
    trainer.step()  # rollout, rewards, advantages; the update is captured, not run
    parameters = trainer.model.trainable_parameters()
    start = [p.detach().clone() for p in parameters]
    gradients = []
    for micro_batch_size in (0, 1):
        with torch.no_grad():
            for param, value in zip(parameters, start, strict=True):
                param.copy_(value)
        settings = dataclasses.replace(captured["settings"], micro_batch_size=micro_batch_size)
        frozen = torch.optim.SGD(parameters, lr=0.0)  # keeps the weights, leaves .grad behind
        kwargs = {**captured["kwargs"], "after_step": lambda kl: None}
        policy_update(
            trainer.model, frozen, captured["batch"], settings, *captured["args"], **kwargs
        )
        gradients.append([p.grad.clone() for p in parameters])
    for whole, pieces in zip(*gradients, strict=True):
        torch.testing.assert_close(pieces, whole, rtol=1e-6, atol=1e-9)
    assert any(g.abs().max() > 0 for g in gradients[0])
