"""How much signal one rollout's policy gradient carries: cosine between independent batches.

GRPO's update direction is an estimate. If two batches of rollouts drawn independently from the
same policy give gradients that point the same way, a step follows the reward; if their cosine
is near zero, a step is mostly noise and a larger learning rate only random-walks the weights.
For each of `--batches` independent rollouts of `--samples` samples (the preset's step rule,
reward weights and group advantages, the policy at the start of training) this computes the
policy gradient at ratio 1 over every trained step, then prints the mean pairwise cosine — per
step and summed — beside the same cosine with the advantages shuffled within each batch (no
signal left: the noise floor). For a gradient that is signal plus independent noise, the cosine
of two N-sample estimates is N·q / (1 + N·q); the script prints an upper bound on q (the
cosine above the floor plus two standard errors) and the N it implies for a cosine of 0.5.

    python benchmarks/bench_gradient_signal.py configs/sage.yaml --samples 64 --batches 6
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch import Tensor

from videogrpo.config import load_config
from videogrpo.embedded.world.grammar import prompts as split_prompts
from videogrpo.runs.loading import load_model, load_reward
from videogrpo.training.rollout import sample_trajectories, shared_noise_seeds
from videogrpo.training.scoring import decode_and_score
from videogrpo.training.step import policy_step
from videogrpo.training.trainer import GRPOTrainer


def per_step_gradients(trainer: GRPOTrainer, num_samples: int) -> tuple[Tensor, Tensor]:
    """(SDE steps, parameters) gradients of −S_k·mean(A·log π) for a fresh rollout at ratio 1,
    and the same with the advantages shuffled."""
    config, model = trainer.config, trainer.model
    prompts, seeds = trainer.next_prompts()
    while len(prompts) < num_samples:
        more_prompts, more_seeds = trainer.next_prompts()
        prompts, seeds = prompts + more_prompts, seeds + more_seeds
    prompts, seeds = prompts[:num_samples], seeds[:num_samples]
    settings = trainer.settings
    sde_mask = trainer.selector.select(
        settings.num_steps, num_samples, stochastic=settings.stochastic
    ).sde_mask
    conditioning = model.encode(prompts, config.sampling.negative_prompt)
    model.eval()
    trajectories = sample_trajectories(
        model, settings, conditioning, seeds, sde_mask=sde_mask,
        initial_seeds=(
            shared_noise_seeds(seeds, config.data.group_size)
            if config.data.shared_initial_noise
            else None
        ),
    )  # fmt: skip
    scored = decode_and_score(
        model, trainer.reward, trajectories.final, prompts,
        decode_batch_size=config.memory.decode_batch_size,
    )  # fmt: skip
    advantages, _ = trainer.score(scored.rewards)
    shuffled = advantages[torch.randperm(num_samples)]
    parameters = [p for p in model.parameters() if p.requires_grad]
    rows: dict[str, list[Tensor]] = {"real": [], "shuffled": []}
    for k in torch.nonzero(sde_mask).flatten().tolist():
        out = policy_step(
            model, settings, k, trajectories.states[k], conditioning,
            prev_sample=trajectories.states[k + 1],
        ).out  # fmt: skip
        weight = float(trainer.loss_settings.step_weights[k])
        for name, adv in (("real", advantages), ("shuffled", shuffled)):
            grads = torch.autograd.grad(
                -(adv * out.log_prob).mean() * weight, parameters, retain_graph=True
            )
            rows[name].append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows["real"]), torch.stack(rows["shuffled"])


def pairwise_cosines(vectors: list[Tensor]) -> Tensor:
    pairs = itertools.combinations(vectors, 2)
    return torch.tensor([float(torch.cosine_similarity(a, b, dim=0)) for a, b in pairs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/sage.yaml")
    parser.add_argument("--samples", type=int, default=64, help="samples per rollout batch")
    parser.add_argument("--batches", type=int, default=6, help="independent batches (>= 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    args = parser.parse_args()
    if args.batches < 2 or args.samples < 2:
        parser.error("need --batches >= 2 and --samples >= 2")
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.set)
    if args.samples % config.data.group_size:
        parser.error(f"--samples must be a multiple of the group size {config.data.group_size}")
    model = load_model(config)
    trainer = GRPOTrainer(config, model, load_reward(config), split_prompts("train"))

    real, shuffled = [], []
    for _ in range(args.batches):
        batch_real, batch_shuffled = per_step_gradients(trainer, args.samples)
        real.append(batch_real)
        shuffled.append(batch_shuffled)
    num_parameters = sum(p.numel() for p in model.trainable_parameters())
    print(
        f"{args.batches} batches of {args.samples} samples, {num_parameters:,} trained parameters"
    )
    print("step  cosine   shuffled advantages (noise floor)")
    for row in range(real[0].shape[0]):
        step_real = pairwise_cosines([g[row] for g in real]).mean()
        step_floor = pairwise_cosines([g[row] for g in shuffled]).mean()
        print(f"{row:>4}  {step_real:+.4f}  {step_floor:+.4f}")
    total = pairwise_cosines([g.sum(0) for g in real])
    floor = pairwise_cosines([g.sum(0) for g in shuffled])
    print(f"all   {total.mean():+.4f}  {floor.mean():+.4f}")
    # Two standard errors of the difference of the two means bound what the floor can hide.
    spread = (total.var() / total.numel() + floor.var() / floor.numel()).sqrt()
    upper = max(float(total.mean() - floor.mean() + 2 * spread), 1e-12)
    per_sample = upper / (args.samples * (1 - upper))
    print(
        f"signal per sample q <= {per_sample:.1e} (2 s.e.): a cosine of 0.5 between two "
        f"estimates needs >= {1 / per_sample:,.0f} samples each"
    )


if __name__ == "__main__":
    main()
