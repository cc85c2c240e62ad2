"""Bad input for the backbone families is one line that names the fix: a folder of another
pipeline, a missing component, sizes the VAE or the patches cannot take, options the family does
not have, a guider videogrpo would silently change, a LoRA target that matches nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from backbone_cases import CASES

from videogrpo.config import TrainConfig
from videogrpo.errors import UserError
from videogrpo.models.registry import build_model, enable_training


def one_line_error(build, match: str) -> str:
    with pytest.raises(UserError, match=match) as error:
        build()
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("name", "pipeline"),
    [("hunyuan_video_15", "HunyuanVideo15Pipeline"), ("ltx", "LTXPipeline")],
)
def test_a_folder_of_another_pipeline_or_without_a_component_is_refused(
    family_dirs, tmp_path, name, pipeline
):
    case = CASES[name]
    wan_folder = family_dirs("wan22_ti2v")
    one_line_error(
        lambda: case.load(wan_folder),
        rf"names pipeline 'WanPipeline'; this model.type loads {pipeline}",
    )
    broken = tmp_path / "broken"
    shutil.copytree(family_dirs(name), broken)
    shutil.rmtree(broken / "text_encoder")
    one_line_error(lambda: case.load(broken), r"lacks the pipeline component\(s\) text_encoder")


@pytest.mark.parametrize(
    ("name", "sizes", "message"),
    [
        ("hunyuan_video_15", {"num_frames": 6}, r"num_frames: 6 does not fit this HunyuanVideo "
         r"1\.5 VAE; use 1 \+ 2·k frames, e\.g\. 7"),
        ("hunyuan_video_15", {"width": 18}, r"16×18 does not fit this HunyuanVideo 1\.5 model; "
         r"both must be multiples of 4"),
        ("ltx", {"num_frames": 8}, r"num_frames: 8 does not fit this LTX-Video VAE; use "
         r"1 \+ 4·k frames, e\.g\. 9"),
        ("wan22_ti2v", {"height": 24}, r"24×32 does not fit this Wan model; both must be "
         r"multiples of 16"),
    ],
)  # fmt: skip
def test_sizes_the_vae_or_patches_cannot_take_are_refused(family_dirs, name, sizes, message):
    one_line_error(lambda: CASES[name].load(family_dirs(name), **sizes), message)


def test_options_a_family_does_not_have_and_a_boundary_without_a_second_expert(family_dirs):
    one_line_error(
        lambda: CASES["ltx"].load(family_dirs("ltx"), options={"boundary_ratio": 0.5}),
        r"model.options: unknown \['boundary_ratio'\] for ltx; allowed: max_sequence_length",
    )
    one_line_error(
        lambda: CASES["wan22_ti2v"].load(
            family_dirs("wan22_ti2v"), options={"boundary_ratio": 0.9}
        ),
        r"boundary_ratio: this Wan folder has one transformer",
    )


def test_a_guider_beyond_plain_cfg_is_refused(family_dirs, tmp_path):
    folder = tmp_path / "rescaled"
    shutil.copytree(family_dirs("hunyuan_video_15"), folder)
    config_file = folder / "guider" / "guider_config.json"
    config = json.loads(config_file.read_text())
    config["guidance_rescale"] = 0.7
    config_file.write_text(json.dumps(config))
    one_line_error(
        lambda: CASES["hunyuan_video_15"].load(folder),
        r"guider sets \{'guidance_rescale': 0\.7\}; videogrpo applies plain classifier-free",
    )


@pytest.mark.parametrize("name", ["hunyuan_video_15", "ltx"])
def test_a_lora_target_that_matches_no_module_names_the_key(family_dirs, name):
    config = TrainConfig()
    config.model.type, config.model.path = CASES[name].model_type, str(family_dirs(name))
    config.model.lora_targets = ["no_such_linear"]
    model = build_model(config.model, config.sampling, config.memory)
    one_line_error(lambda: enable_training(model, config.model), r"model.lora_targets: ")


@pytest.mark.parametrize("name", ["hunyuan_video_15", "ltx"])
def test_the_default_lora_targets_exist_in_each_family(family_dirs, name):
    """Every default target name matches at least one module of the family's transformer."""
    model = CASES[name].load(family_dirs(name))
    names = [module_name for module_name, _ in model.transformer.named_modules()]
    for target in model.default_lora_targets:
        assert any(n == target or n.endswith(f".{target}") for n in names), target
