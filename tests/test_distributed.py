"""torchrun on CPUs: 2 gloo processes against one, on the tiny random TinyWan.

Each test spawns two ranks (1 thread each) that run the same code as `torchrun -m videogrpo`,
write what they saw to files, and compares it with one process doing the whole batch.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from conftest import PRESETS_DIR, tiny_settings
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

import videogrpo.training.update as update_module
from videogrpo.config import load_config
from videogrpo.distributed.world import World, close_world, init_world
from videogrpo.runs.train import load_reward, load_shared_model
from videogrpo.training.prompts import load_prompts
from videogrpo.training.trainer import GRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, function, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
    )
    torch.set_num_threads(1)
    world = init_world("gloo")
    try:
        function(world, *args)
    finally:
        close_world(world)


def run_ranks(size: int, function, *args) -> None:
    """`function(world, *args)` on `size` gloo ranks, as torchrun would start them."""
    torch.multiprocessing.start_processes(
        _rank_main, args=(size, _free_port(), function, args), nprocs=size, start_method="spawn"
    )


def full_weights(model) -> dict[str, torch.Tensor]:
    """The trainable weights, whole (FSDP2 shards gathered)."""
    return {
        name: (param.full_tensor() if isinstance(param, DTensor) else param).detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def make_trainer(world: World, model_dir, output_dir, preset: str, overrides) -> GRPOTrainer:
    config = load_config(
        PRESETS_DIR / f"{preset}.yaml", tiny_settings(model_dir, output_dir) + overrides
    )
    torch.manual_seed(config.run.seed)
    model, parallel = load_shared_model(config, world)
    return GRPOTrainer(
        config, model, load_reward(config), load_prompts(config.data.prompts), parallel=parallel
    )


def one_iteration(world: World, model_dir, output_dir, preset, overrides) -> None:
    """One trainer step; writes the weight change, rewards, composite, advantages, metrics and
    the state of the λ controller and the curriculum that this rank ends with."""
    trainer = make_trainer(world, model_dir, output_dir, preset, overrides)
    paddings = []
    padding_step = update_module.padding_step
    update_module.padding_step = lambda *args: paddings.append(args[2]) or padding_step(*args)
    composites = []
    score = trainer.score

    def keep_composite(rewards):
        advantages, weighted = score(rewards)
        composites.append(weighted.composite.float())
        return advantages, weighted

    trainer.score = keep_composite
    before = full_weights(trainer.model)
    result = trainer.step()
    after = full_weights(trainer.model)
    out = Path(output_dir)
    tensors = {f"delta/{name}": after[name] - before[name] for name in after}
    tensors.update({f"reward/{name}": value for name, value in result.rewards.items()})
    tensors["advantages"] = result.advantages
    tensors["composite"] = composites[0]
    save_file(tensors, str(out / f"rank{world.rank}.safetensors"))
    state = {
        "metrics": result.metrics,
        "kl_schedule": trainer.kl.schedule.state_dict(),
        "lambda": trainer.kl.coefficient(),
        "curriculum": trainer.curriculum.state_dict(),
        "padded_steps": paddings,
    }
    (out / f"rank{world.rank}.json").write_text(json.dumps(state))


def run_one_and_two(tmp_path, model_dir, preset, overrides):
    """(tensors, state) of one process, and of each of two ranks, after one iteration."""
    results = []
    for size in (1, 2):
        out = tmp_path / f"world{size}"
        out.mkdir()
        if size == 1:
            one_iteration(World(), model_dir, out, preset, overrides)
        else:
            run_ranks(size, one_iteration, model_dir, out, preset, overrides)
        results.append(
            [
                (
                    load_file(str(out / f"rank{rank}.safetensors")),
                    json.loads((out / f"rank{rank}.json").read_text()),
                )
                for rank in range(size)
            ]
        )
    return results[0][0], results[1]


# Where one process and two ranks differ: the same rows go through the model in batches of
# another size (half of each minibatch per rank), and a float32 matmul (u = 6e-8) may round a
# row differently in another batch. Through 4 sampling steps that leaves rewards within 1e-5 of
# their scale (170 u; measured on this machine: 1.1e-6).
REWARD_RTOL = 1e-5
# Rounding of the gradient sums themselves (float32, over ranks in another order).
GRADIENT_ROUNDING = 1e-5

CASES = {
    # DDP over a LoRA; sage's dual KL and adaptive λ; each minibatch of 4 is one group of 4,
    # split 2 + 2 over the ranks.
    "ddp-lora": ("sage", ["model.finetune=lora", "data.group_size=4"]),
    # FSDP2 full fine-tuning, the staged curriculum with EMA competence.
    "fsdp-full": (
        "sage",
        [
            "model.finetune=full",
            "data.group_size=4",
            "reward.curriculum=staged",
            "reward.competence=ema",
        ],
    ),
    # DanceGRPO: random steps per sample and only each group's best and worst trained, so a
    # rank may have no rows for a step another trains (the padding forward); shared initial
    # noise across a split group.
    "ddp-dance": ("dancegrpo", ["model.finetune=lora", "data.group_size=4"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_iteration_on_two_ranks_changes_the_weights_as_one_process(
    tmp_path, tiny_model_dir, case
):
    preset, overrides = CASES[case]
    (one, one_state), ranks = run_one_and_two(tmp_path, tiny_model_dir, preset, overrides)
    (two, two_state), (other, other_state) = ranks

    # Every rank ends the iteration with the same weights and the same view of the batch.
    for key in two:
        assert torch.equal(two[key], other[key]), key
    assert two_state["kl_schedule"] == other_state["kl_schedule"]
    assert two_state["curriculum"] == other_state["curriculum"]

    # Rewards: the rollouts' rounding only.
    for key in [key for key in one if key.startswith("reward/")]:
        scale = float(one[key].abs().max())
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=REWARD_RTOL * scale)
    # Advantages divide the composite's error by its group's std σ_G (population, G = 4).
    composite = one["composite"].double()
    group_std = composite.reshape(-1, 4).std(dim=1, correction=0).min()
    advantage_atol = REWARD_RTOL * float(composite.abs().max() / group_std)
    torch.testing.assert_close(two["advantages"], one["advantages"], rtol=0, atol=advantage_atol)
    # The gradient is linear in the advantages (rms 1 per group), so its relative error is at
    # most theirs: the clipped norm it logs, and Adam's step (scale-free: its relative error is
    # the gradient's) in norm over all weights.
    gradient_rtol = advantage_atol + GRADIENT_ROUNDING
    one_norm, two_norm = one_state["metrics"]["grad/norm"], two_state["metrics"]["grad/norm"]
    assert abs(two_norm - one_norm) <= gradient_rtol * one_norm
    one_delta = torch.cat([one[k].flatten() for k in one if k.startswith("delta/")])
    two_delta = torch.cat([two[k].flatten() for k in one if k.startswith("delta/")])
    assert one_delta.norm() > 0
    assert (two_delta - one_delta).norm() <= gradient_rtol * one_delta.norm()
    # λ moved by the same controller decisions; the curriculum's EMA competence as one process.
    assert two_state["lambda"] == one_state["lambda"]
    if case == "ddp-dance":  # the padding forward ran (and changed nothing above)
        assert two_state["padded_steps"] or other_state["padded_steps"]
    if case == "fsdp-full":
        one_competence = one_state["curriculum"]["competence"]["value"]
        two_competence = two_state["curriculum"]["competence"]["value"]
        assert two_competence == pytest.approx(one_competence, rel=REWARD_RTOL)
