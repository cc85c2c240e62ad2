"""`videogrpo sample`: prompts → mp4 and gif with any step rule, η and seed."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Generate videos from prompts with the embedded default, a model folder or a run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    parser.add_argument("--out", default="sample.mp4", help="output mp4 (a .gif is written beside)")
    parser.add_argument("--model", help="model folder (default: the embedded pretrained model)")
    parser.add_argument("--run", help="a training run directory: sample its latest weights")
    parser.add_argument("--rule", default="ode", help="step rule: ode, dance, flow, sage, cps")
    parser.add_argument("--eta", type=float, default=0.0, help="exploration scale η")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--shift", type=float, default=3.0, help="schedule shift")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the first video")


def run(args: argparse.Namespace) -> int:
    import torch

    from videogrpo.core import schedule
    from videogrpo.errors import UserError
    from videogrpo.runs.train import load_for_inference
    from videogrpo.runs.video_io import video_grid, write_gif, write_mp4
    from videogrpo.training.rollout import sample_trajectories

    if args.steps < 1:
        raise UserError(f"--steps {args.steps}: need at least 1 step")
    model = load_for_inference(args.model, args.run)
    for prompt in args.prompt:  # an unknown word would silently become <unk>
        if model.tokenizer.unk_token_id in model.tokenizer(prompt).input_ids:
            unknown = [word for word in prompt.lower().split() if word not in model.vocabulary]
            raise UserError(
                f"prompt {prompt!r} has words the model does not know ({', '.join(unknown)}); "
                f"its vocabulary: {', '.join(model.vocabulary)}"
            )
    sigmas = schedule.sigmas(args.steps, args.shift)
    sde_mask = torch.full((args.steps,), args.rule != "ode")
    try:
        trajectories = sample_trajectories(
            model,
            args.prompt,
            [args.seed + i for i in range(len(args.prompt))],
            sigmas,
            rule=args.rule,
            eta=args.eta,
            sde_mask=sde_mask,
            guidance_scale=args.guidance,
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    videos = model.decode(trajectories.final)
    clip = videos[0] if len(videos) == 1 else video_grid(videos, ncols=min(4, len(videos)))
    out = Path(args.out)
    write_mp4(out, clip)
    write_gif(out.with_suffix(".gif"), clip)
    print(f"wrote {out} and {out.with_suffix('.gif')}")
    return 0
