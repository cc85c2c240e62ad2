"""`videogrpo sample`: prompts → mp4 and gif with any step rule, η and seed."""

from __future__ import annotations

import argparse
from pathlib import Path

from videogrpo.config.settings import STEP_RULES

HELP = "Generate videos from prompts with the embedded default, a model folder or a run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    parser.add_argument("--out", default="sample.mp4", help="output mp4 (a .gif is written beside)")
    parser.add_argument("--model", help="model folder (default: the embedded pretrained model)")
    parser.add_argument("--model-type", help="backbone of --model (default: tiny_wan)")
    parser.add_argument("--run", help="a training run directory: sample its latest weights")
    parser.add_argument(
        "--rule", default="ode", choices=STEP_RULES, help="step rule (default: ode)"
    )
    parser.add_argument("--eta", type=float, default=0.0, help="exploration scale η")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--shift", type=float, default=3.0, help="schedule shift")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
    parser.add_argument("--negative-prompt", default="", help="guidance's unconditional prompt")
    parser.add_argument(
        "--seed", type=int, default=0, help="noise seed of the first video (0 … 2^63 − 1)"
    )


def run(args: argparse.Namespace) -> int:
    check_sampling_flags(args)
    import torch

    from videogrpo.errors import UserError
    from videogrpo.runs.loading import load_for_inference
    from videogrpo.runs.rundir import check_output_file
    from videogrpo.runs.video_io import video_grid, write_gif, write_mp4
    from videogrpo.training.build import eval_step_settings
    from videogrpo.training.rollout import sample_final

    out = Path(args.out)
    check_output_file(out, "--out")
    model = load_for_inference(args.model, args.run, args.model_type)
    check_prompts = getattr(model, "check_prompts", None)
    if check_prompts is not None:  # e.g. an unknown word would silently become <unk>
        check_prompts(args.prompt)
    try:
        settings = eval_step_settings(args.steps, args.shift, args.guidance, args.rule, args.eta)
        sde_mask = torch.full((args.steps,), args.rule != "ode")
        final = sample_final(
            model,
            settings,
            model.encode(args.prompt, args.negative_prompt),
            [args.seed + i for i in range(len(args.prompt))],
            sde_mask=sde_mask,
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    videos = model.decode(final).cpu()
    clip = videos[0] if len(videos) == 1 else video_grid(videos, ncols=min(4, len(videos)))
    write_mp4(out, clip)
    write_gif(out.with_suffix(".gif"), clip)
    print(f"wrote {out} and {out.with_suffix('.gif')}")
    return 0


def check_sampling_flags(args: argparse.Namespace) -> None:
    """The flags that stand for a training setting obey its rules (finite, in range); shared
    with `videogrpo eval`. Reads only the config module, so a bad flag costs no torch import."""
    from videogrpo.config import TrainConfig
    from videogrpo.config.schema import check_setting

    for key, flag, value in [
        ("eval.num_steps", "--steps", args.steps),
        ("sampling.shift", "--shift", args.shift),
        ("sampling.guidance_scale", "--guidance", args.guidance),
        ("sampling.eta", "--eta", args.eta),
        ("eval.seed", "--seed", args.seed),
    ]:
        check_setting(TrainConfig, key, value, flag)
