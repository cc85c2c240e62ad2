"""`videogrpo eval`: reward means and spreads of a model on a prompt set with fixed seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

from videogrpo.commands.sample import check_sampling_flags
from videogrpo.config.settings import STEP_RULES

HELP = "Evaluate a model on prompts (held-out by default) with fixed seeds; ODE by default."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (default: the embedded pretrained model)")
    parser.add_argument("--model-type", help="backbone of --model (default: tiny_wan)")
    parser.add_argument("--run", help="a training run directory: evaluate its latest weights")
    parser.add_argument("--prompts", default="heldout", help="world split or a prompt file")
    parser.add_argument(
        "--max-prompts", type=int, default=0, help="use the first N prompts (0: all)"
    )
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="seeds per prompt")
    parser.add_argument("--seed", type=int, default=1234, help="base seed of the fixed noise")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--shift", type=float, default=3.0, help="schedule shift")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
    parser.add_argument(
        "--rule",
        default="ode",
        choices=STEP_RULES,
        help="step rule (ode for eval; sage etc. for spread)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="exploration scale η")
    parser.add_argument("--negative-prompt", default="", help="guidance's unconditional prompt")
    parser.add_argument("--json", help="write the numbers to this JSON file")
    parser.add_argument("--videos", help="write each sample as a GIF into this folder")


def run(args: argparse.Namespace) -> int:
    from videogrpo.config import TrainConfig
    from videogrpo.config.schema import check_setting

    check_sampling_flags(args)
    check_setting(TrainConfig, "eval.max_prompts", args.max_prompts, "--max-prompts")
    check_setting(
        TrainConfig, "eval.samples_per_prompt", args.samples_per_prompt, "--samples-per-prompt"
    )

    from videogrpo.errors import UserError
    from videogrpo.rewards.registry import build_reward
    from videogrpo.runs.evaluation import evaluate
    from videogrpo.runs.loading import load_for_inference, read_run_config
    from videogrpo.runs.resources import check_eval_fits
    from videogrpo.runs.rundir import check_output_file, check_output_folder
    from videogrpo.runs.video_io import write_gif
    from videogrpo.training.build import eval_step_settings
    from videogrpo.training.prompts import load_prompts

    if args.json:
        check_output_file(Path(args.json), "--json")
    if args.videos:
        check_output_folder(Path(args.videos), "--videos")
    config = TrainConfig() if args.run is None else read_run_config(Path(args.run))
    model = load_for_inference(args.model, args.run, args.model_type)
    reward = build_reward(config.reward)  # the run's reward, or the default one
    prompts = load_prompts(args.prompts)
    if args.max_prompts:
        prompts = prompts[: args.max_prompts]
    check_eval_fits(model, len(prompts) * args.samples_per_prompt, "--samples-per-prompt")
    try:
        result = evaluate(
            model,
            reward,
            prompts,
            eval_step_settings(args.steps, args.shift, args.guidance, args.rule, args.eta),
            samples_per_prompt=args.samples_per_prompt,
            seed=args.seed,
            negative_prompt=args.negative_prompt,
            keep_videos=len(prompts) * args.samples_per_prompt if args.videos else 0,
            composite_of=config.reward.composite_components(),
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    summary = {
        "prompts": args.prompts,
        "num_prompts": len(prompts),
        "samples_per_prompt": args.samples_per_prompt,
        "rule": args.rule,
        "eta": args.eta,
        "steps": args.steps,
        "seed": args.seed,
        **result.summary,
    }
    width = max(len(key) for key in result.summary)
    for key, value in result.summary.items():
        print(f"{key:<{width}}  {value:.4f}")
    if args.json:
        from videogrpo.runs.checkpoint import write_text_atomically
        from videogrpo.runs.tracking import dumps_strict

        try:
            write_text_atomically(Path(args.json), dumps_strict(summary, indent=2) + "\n")
        except OSError as error:
            raise UserError(f"--json {args.json}: cannot write ({error.strerror})") from error
    if result.videos is not None:
        folder = Path(args.videos)
        folder.mkdir(parents=True, exist_ok=True)
        for i, video in enumerate(result.videos):
            write_gif(folder / f"{i:04d}.gif", video)
    return 0
