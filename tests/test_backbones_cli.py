"""The external check's command line on each backbone type's tiny folder, through the CLI only.

The keys are exactly the check's (`videogrpo train configs/flowgrpo.yaml --set model.type=TYPE
--set model.path=DIR --set sampling.height=H --set sampling.width=W --set sampling.num_frames=F
--set data.prompts=PROMPTS.txt --set reward.type=python --set
reward.options.function=MODULE:FUNCTION --set run.iterations=1`); four more keys shrink the eval
and the batch and place the run, so that each type takes seconds on a CPU.
"""

from __future__ import annotations

import json

import pytest
from backbone_cases import CASES
from conftest import PRESETS_DIR, TINY_PIPELINE_VIDEO
from tiny_pipelines import PROMPTS

from videogrpo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def redness(videos, prompts):
    """The function the check names: mean red minus mean blue of each clip."""
    return {"redness": videos[..., 0].mean(dim=(1, 2, 3)) - videos[..., 2].mean(dim=(1, 2, 3))}


@pytest.mark.parametrize("model_type", ["wan", "hunyuan_video_15", "ltx"])
def test_the_external_check_command_trains_each_backbone_type(
    tiny_pipeline_dir, tmp_path_factory, tmp_path, capsys, model_type
):
    if model_type == "wan":
        folder, video = tiny_pipeline_dir, TINY_PIPELINE_VIDEO
    else:
        case = CASES[model_type]
        folder, video = case.build(tmp_path_factory.mktemp(model_type)), case.video
    prompts = tmp_path / "PROMPTS.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    settings = [
        f"model.type={model_type}",
        f"model.path={folder}",
        f"sampling.height={video['height']}",
        f"sampling.width={video['width']}",
        f"sampling.num_frames={video['num_frames']}",
        f"data.prompts={prompts}",
        "reward.type=python",
        f"reward.options.function={__name__}:redness",
        "run.iterations=1",
        f"run.output_dir={tmp_path / 'runs'}",
        "eval.max_prompts=2",
        "eval.num_steps=2",
        "data.prompts_per_iteration=2",
    ]
    args = ["train", str(PRESETS_DIR / "flowgrpo.yaml"), "--quiet"]
    for setting in settings:
        args += ["--set", setting]
    code = main(args)
    assert code == 0, capsys.readouterr().err
    (summary_file,) = (tmp_path / "runs").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["iterations"] == 1 and summary["config"]["model"]["type"] == model_type
    assert set(summary["eval_after"]) == {"redness", "composite"}
