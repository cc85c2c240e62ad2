"""torchrun on CPUs: 2 gloo processes against one, on the tiny random TinyWan.

Each test spawns two ranks (1 thread each) that run the same code as `torchrun -m videogrpo`,
write what they saw to files, and compares it with one process doing the whole batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from backbone_cases import CASES as BACKBONE_CASES
from conftest import PRESETS_DIR, tiny_settings
from safetensors.torch import load_file, save_file
from test_backbones_training import family_settings
from torch.distributed.tensor import DTensor

import videogrpo.training.update as update_module
from videogrpo.config import load_config
from videogrpo.distributed.checkpoint import SHARDED_DIR
from videogrpo.distributed.layout import BatchLayout, check_batch_layout
from videogrpo.distributed.parallel import fsdp_units
from videogrpo.distributed.spawn import run_local
from videogrpo.distributed.world import World, init_world
from videogrpo.errors import UserError
from videogrpo.runs.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from videogrpo.runs.loading import load_reward, load_shared_model
from videogrpo.runs.ranks import fill_state, save_job_checkpoint
from videogrpo.runs.train import train
from videogrpo.training.prompts import load_prompts
from videogrpo.training.trainer import GRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


# NCCL_CHECK=1 (scripts/check_nccl.sh) runs these tests on GPUs with NCCL instead of gloo.
BACKEND = "nccl" if os.environ.get("NCCL_CHECK") else "gloo"


def run_ranks(size: int, function, *args) -> None:
    """`function(world, *args)` on `size` ranks, as torchrun would start them."""
    run_local(size, function, *args, backend=BACKEND)


def full_weights(model) -> dict[str, torch.Tensor]:
    """The trainable weights, whole (FSDP2 shards gathered)."""
    return {
        name: (param.full_tensor() if isinstance(param, DTensor) else param).detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def float32_matmuls() -> None:
    """On GPUs, no TF32: it rounds at 1e-3, far above the float32 tolerances below."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def make_trainer(world: World, model_dir, output_dir, preset: str, overrides) -> GRPOTrainer:
    float32_matmuls()
    config = load_config(
        PRESETS_DIR / f"{preset}.yaml", tiny_settings(model_dir, output_dir) + overrides
    )
    torch.manual_seed(config.run.seed)
    model, parallel = load_shared_model(config, world)
    return GRPOTrainer(
        config, model, load_reward(config), load_prompts(config.data.prompts), parallel=parallel
    )


def keep_composites(trainer: GRPOTrainer) -> list[torch.Tensor]:
    """The composite reward of each coming iteration, as the trainer scores it."""
    composites = []
    score = trainer.score

    def keep_composite(rewards):
        advantages, weighted = score(rewards)
        composites.append(weighted.composite.float())
        return advantages, weighted

    trainer.score = keep_composite
    return composites


def gradient_tolerance(composite: torch.Tensor, group_size: int) -> float:
    """Relative error of a gradient (and of Adam's step) from the rewards' rounding: the group
    std σ_G divides the composite's error into the advantages, whose rms is 1 per group."""
    composite = composite.double()
    group_std = composite.reshape(-1, group_size).std(dim=1, correction=0).min()
    return REWARD_RTOL * float(composite.abs().max() / group_std) + GRADIENT_ROUNDING


def one_iteration(world: World, model_dir, output_dir, preset, overrides) -> None:
    """One trainer step; writes the weight change, rewards, composite, advantages, metrics and
    the state of the λ controller and the curriculum that this rank ends with."""
    trainer = make_trainer(world, model_dir, output_dir, preset, overrides)
    paddings, first_replays = [], []
    padding_step, clipped_loss = update_module.padding_step, update_module.clipped_policy_loss

    def padding(*args):
        paddings.append(args[2])
        return padding_step(*args)

    def loss(log_prob, old_log_prob, *args, **kwargs):
        if trainer.optimizer_steps == 0:  # the first minibatch replays the rollout's batches
            first_replays.append(torch.equal(log_prob.detach(), old_log_prob))
        return clipped_loss(log_prob, old_log_prob, *args, **kwargs)

    update_module.padding_step, update_module.clipped_policy_loss = padding, loss
    composites = keep_composites(trainer)
    before = full_weights(trainer.model)
    try:
        result = trainer.step()
    finally:
        update_module.padding_step, update_module.clipped_policy_loss = padding_step, clipped_loss
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
        "first_replays": first_replays,
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
    # DanceGRPO: random steps per sample and only each group's best and worst trained, one
    # sample per model call, so ranks make different numbers of calls per step (the others
    # pad) under FSDP2, whose every call gathers weights; shared initial noise across a split
    # group.
    "fsdp-dance": (
        "dancegrpo",
        [
            "model.finetune=lora",
            "distributed.strategy=fsdp",
            "data.group_size=4",
            "memory.micro_batch_size=1",
        ],
    ),
    # Wan 2.2's two experts under DDP: a model call uses one expert's weights and leaves the
    # other's out, yet both accumulate gradients within a minibatch (groups of 2 split 1 + 1).
    "ddp-wan22": ("sage", ["model.finetune=lora"]),
}


def wan22_settings(tmp_path_factory) -> list[str]:
    """A tiny Wan 2.2 A14B pipeline folder (two experts) and its family's run settings."""
    folder = tmp_path_factory.mktemp("wan22")
    built = BACKBONE_CASES["wan22_a14b"].build(folder / "pipeline")
    return family_settings(built, folder, "wan22_a14b")


@pytest.mark.parametrize("case", list(CASES))
def test_one_iteration_on_two_ranks_changes_the_weights_as_one_process(
    tmp_path, tmp_path_factory, tiny_model_dir, case
):
    preset, overrides = CASES[case]
    if case == "ddp-wan22":
        overrides = [*wan22_settings(tmp_path_factory), *overrides]
    group_size = int([o for o in overrides if o.startswith("data.group_size=")][-1].split("=")[1])
    (one, one_state), ranks = run_one_and_two(tmp_path, tiny_model_dir, preset, overrides)
    (two, two_state), (other, other_state) = ranks

    # The first minibatch replays each rank's rollout batches: ratio exactly 1 on every rank.
    replays = [*two_state["first_replays"], *other_state["first_replays"]]
    assert replays and all(replays) and all(one_state["first_replays"])
    # Every rank ends the iteration with the same weights and the same view of the batch.
    for key in two:
        assert torch.equal(two[key], other[key]), key
    assert two_state["kl_schedule"] == other_state["kl_schedule"]
    assert two_state["curriculum"] == other_state["curriculum"]

    # Rewards: the rollouts' rounding only.
    for key in [key for key in one if key.startswith("reward/")]:
        scale = float(one[key].abs().max())
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=REWARD_RTOL * scale)
    # Advantages divide the composite's error by its group's std σ_G; the gradient is linear
    # in them (rms 1 per group), so its relative error is theirs: the clipped norm it logs, and
    # Adam's step (scale-free: its relative error is the gradient's) in norm over all weights.
    gradient_rtol = gradient_tolerance(one["composite"], group_size)
    advantage_atol = gradient_rtol - GRADIENT_ROUNDING
    torch.testing.assert_close(two["advantages"], one["advantages"], rtol=0, atol=advantage_atol)
    one_norm, two_norm = one_state["metrics"]["grad/norm"], two_state["metrics"]["grad/norm"]
    assert abs(two_norm - one_norm) <= gradient_rtol * one_norm
    one_delta = torch.cat([one[k].flatten() for k in one if k.startswith("delta/")])
    two_delta = torch.cat([two[k].flatten() for k in one if k.startswith("delta/")])
    assert one_delta.norm() > 0
    assert (two_delta - one_delta).norm() <= gradient_rtol * one_delta.norm()
    # λ moved by the same controller decisions; the curriculum's EMA competence as one process.
    assert two_state["lambda"] == one_state["lambda"]
    if case == "ddp-wan22":  # both experts moved
        for expert in ("transformer.", "transformer_2."):
            assert any(one[k].abs().max() > 0 for k in one if k.startswith(f"delta/{expert}"))
    if case == "fsdp-dance":  # the padding forward ran (and changed nothing above)
        assert two_state["padded_steps"] or other_state["padded_steps"]
    if case == "fsdp-full":
        one_competence = one_state["curriculum"]["competence"]["value"]
        two_competence = two_state["curriculum"]["competence"]["value"]
        assert two_competence == pytest.approx(one_competence, rel=REWARD_RTOL)


def checkpoint_then_continue(world: World, model_dir, output_dir, preset, overrides) -> None:
    """Iteration 1, a checkpoint as `videogrpo train` writes it (DCP on several ranks, the
    one-process format alone), then iteration 2 uninterrupted."""
    trainer = make_trainer(world, model_dir, output_dir, preset, overrides)
    trainer.step()
    folder = Path(output_dir) / "checkpoint"
    state = {"trainer": trainer.state_dict(), "rng": rng_state()}
    if world.size == 1:
        save_checkpoint(folder, state, step=1)
    else:
        save_job_checkpoint(folder, state, 1, trainer.parallel)
    write_iteration(world, trainer, Path(output_dir) / "uninterrupted")


def resume_then_continue(world: World, model_dir, output_dir, preset, overrides) -> None:
    """A fresh trainer loads the checkpoint of another world size and runs iteration 2."""
    trainer = make_trainer(world, model_dir, output_dir, preset, overrides)
    state, found = load_checkpoint(Path(output_dir) / "checkpoint")
    state = fill_state(state, found.path, trainer, trainer.parallel)
    trainer.load_state_dict(state["trainer"])
    restore_rng_state(state["rng"])
    write_iteration(world, trainer, Path(output_dir) / "resumed")


def write_iteration(world: World, trainer: GRPOTrainer, prefix: Path) -> None:
    """Weights before and after the coming iteration, its rewards and composite, the counters."""
    composites = keep_composites(trainer)
    before = full_weights(trainer.model)
    result = trainer.step()
    after = full_weights(trainer.model)
    if world.is_main:
        tensors = {f"before/{name}": value for name, value in before.items()}
        tensors.update({f"after/{name}": value for name, value in after.items()})
        tensors.update({f"reward/{name}": value for name, value in result.rewards.items()})
        tensors["composite"] = composites[0]
        save_file(tensors, str(prefix.with_suffix(".safetensors")))
        state = {
            "iteration": trainer.iteration,
            "optimizer_steps": trainer.optimizer_steps,
            "kl_schedule": trainer.kl.schedule.state_dict(),
        }
        prefix.with_suffix(".json").write_text(json.dumps(state))


@pytest.mark.parametrize(("writer", "reader"), [(2, 1), (1, 2)])
def test_a_checkpoint_of_one_world_size_resumes_on_another(
    tmp_path, tiny_model_dir, writer, reader
):
    """FSDP2 full fine-tuning: checkpointed after iteration 1 by `writer` ranks, resumed by
    `reader` ranks, iteration 2 is the uninterrupted run's up to the world size's rounding."""
    preset, overrides = CASES["fsdp-full"]
    for size, function in ((writer, checkpoint_then_continue), (reader, resume_then_continue)):
        if size == 1:
            function(World(), tiny_model_dir, tmp_path, preset, overrides)
        else:
            run_ranks(size, function, tiny_model_dir, tmp_path, preset, overrides)
    resumed = load_file(str(tmp_path / "resumed.safetensors"))
    uninterrupted = load_file(str(tmp_path / "uninterrupted.safetensors"))
    resumed_state = json.loads((tmp_path / "resumed.json").read_text())
    uninterrupted_state = json.loads((tmp_path / "uninterrupted.json").read_text())

    # The checkpoint carries the weights exactly, and the counters and λ.
    names = [key.removeprefix("before/") for key in resumed if key.startswith("before/")]
    for name in names:
        assert torch.equal(resumed[f"before/{name}"], uninterrupted[f"before/{name}"]), name
    assert resumed_state["iteration"] == uninterrupted_state["iteration"] == 2
    assert resumed_state["optimizer_steps"] == uninterrupted_state["optimizer_steps"] == 4
    resumed_kl, uninterrupted_kl = resumed_state["kl_schedule"], uninterrupted_state["kl_schedule"]
    assert resumed_kl["lambda"] == uninterrupted_kl["lambda"]
    assert resumed_kl["updates"] == uninterrupted_kl["updates"]
    # Iteration 2 draws the same prompts and noise (generators restored): rewards as in the
    # one-iteration test; Adam's moments restored: its step as the uninterrupted run's.
    for key in [key for key in resumed if key.startswith("reward/")]:
        scale = float(uninterrupted[key].abs().max())
        torch.testing.assert_close(
            resumed[key], uninterrupted[key], rtol=0, atol=REWARD_RTOL * scale
        )
    step = torch.cat(
        [(uninterrupted[f"after/{n}"] - uninterrupted[f"before/{n}"]).flatten() for n in names]
    )
    resumed_step = torch.cat(
        [(resumed[f"after/{n}"] - resumed[f"before/{n}"]).flatten() for n in names]
    )
    assert step.norm() > 0
    tolerance = gradient_tolerance(uninterrupted["composite"], group_size=4)
    assert (resumed_step - step).norm() <= tolerance * step.norm()


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_in_one_line():
    check_batch_layout(prompts=2, group_size=4, minibatches=2, ranks=2)  # 4 per step: 2 + 2
    with pytest.raises(UserError, match="4 samples per optimizer step.*split over 3 ranks"):
        check_batch_layout(prompts=2, group_size=4, minibatches=2, ranks=3)


def test_a_backend_the_machine_cannot_run_is_refused_before_any_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="nccl needs CUDA GPUs"):
        init_world("nccl")
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")  # without torchrun: the one-process world, no group
    assert init_world("nccl") == World()
    assert not torch.distributed.is_initialized()


def test_fsdp_needs_a_backbone_that_names_its_blocks():
    class Opaque:  # a VideoGenerator without fsdp_units
        pass

    with pytest.raises(UserError, match="does not say how to shard it.*strategy=ddp"):
        fsdp_units(Opaque())


def test_the_batch_layout_gives_each_rank_its_part_of_every_minibatch():
    """8 samples in 2 minibatches of 4 over 2 ranks: rank 0 holds 0, 1, 4, 5; gathering the
    ranks' rows in rank order and putting them back restores the batch."""
    chunks = list(torch.arange(8).chunk(2))
    layouts = [BatchLayout.split(chunks, World(rank=r, size=2)) for r in range(2)]
    assert layouts[0].samples.tolist() == [0, 1, 4, 5]
    assert layouts[1].samples.tolist() == [2, 3, 6, 7]
    assert [c.tolist() for c in layouts[1].chunks] == [[0, 1], [2, 3]]
    values = torch.arange(8.0) * 10
    gathered = torch.cat([layout.local(values) for layout in layouts])
    assert torch.equal(layouts[0].to_global(gathered), values)
    assert [layout.kept(5) for layout in layouts] == [3, 2]  # of samples 0..4
    trained = torch.zeros(8, 3, dtype=torch.bool)
    trained[1, 0] = trained[6, 2] = trained[7, 2] = True
    assert [(w.steps, w.rows, w.pairs) for w in layouts[0].work(trained)] == [
        ([0], [1], 1),  # rank 0 trains step 0 with one row; rank 1 pads
        ([2], [2], 2),  # rank 1 trains step 2 with two rows; rank 0 pads
    ]


def train_ranks(world: World, arguments: dict) -> None:
    """`videogrpo train` as torchrun starts it on every rank."""
    float32_matmuls()
    train(progress=False, **arguments)


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_a_run_moves_between_world_sizes_and_goes_on_as_if_uninterrupted(tmp_path, tiny_model_dir):
    """`videogrpo train` on 2 ranks for iteration 1, resumed by one process for iteration 2 and
    by 2 ranks again for iteration 3, against 3 uninterrupted iterations on 2 ranks (FSDP2 full
    fine-tuning, staged curriculum): rank 0 alone writes, each checkpoint has the writers' format,
    and the resumed iterations draw the same batches and reach the same rewards and λ."""
    float32_matmuls()
    preset, overrides = CASES["fsdp-full"]
    config_path = str(PRESETS_DIR / f"{preset}.yaml")
    settings = [*tiny_settings(tiny_model_dir, tmp_path), *overrides, "run.videos_every=1"]
    moved, straight = tmp_path / "moved", tmp_path / "straight"
    first = [*settings, "run.name=moved", "run.iterations=1"]
    run_ranks(2, train_ranks, {"config_path": config_path, "overrides": first})
    assert len(list((moved / "checkpoint" / SHARDED_DIR).glob("*.safetensors"))) == 2
    train(resume=moved, overrides=["run.iterations=2"], progress=False)
    assert not (moved / "checkpoint" / SHARDED_DIR).exists()  # one process, its own format
    run_ranks(2, train_ranks, {"resume": moved, "overrides": ["run.iterations=3"]})
    straight_overrides = [*settings, "run.name=straight", "run.iterations=3"]
    run_ranks(2, train_ranks, {"config_path": config_path, "overrides": straight_overrides})

    moved_rows, straight_rows = metric_rows(moved), metric_rows(straight)
    assert [row["iteration"] for row in moved_rows] == [1, 2, 3]  # each written once
    assert moved_rows[0] == straight_rows[0]  # the same 2-rank iteration, bitwise
    for resumed, uninterrupted in zip(moved_rows[1:], straight_rows[1:], strict=True):
        assert resumed["optim/steps"] == uninterrupted["optim/steps"]
        # The pairs' λ are the same; their float32 mean is summed in another order (24 pairs:
        # at most 24 u = 1.4e-6 apart).
        assert resumed["kl/coef"] == pytest.approx(uninterrupted["kl/coef"], rel=1.5e-6)
        means = [
            key for key in uninterrupted if key.startswith("reward/") and key.endswith("_mean")
        ]
        for key in means:
            assert resumed[key] == pytest.approx(uninterrupted[key], rel=REWARD_RTOL, abs=1e-12)
    summary = json.loads((moved / "summary.json").read_text())
    assert summary["iterations"] == 3
    assert len(list((moved / "rollouts").iterdir())) == 3
