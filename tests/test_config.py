"""The training config: defaults, YAML + `--set` overrides, one-line errors that name the key.

Guards DESIGN.md layer 1: "Every error names the key, the bad value and what is allowed", and
every preset under configs/ loads as it is.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import ALL_PRESETS, PRESET_IDS, setting_keys

from videogrpo.config import TrainConfig, config_to_yaml, load_config
from videogrpo.config.schema import describe
from videogrpo.errors import UserError


def user_error(overrides: list[str], path=None) -> str:
    with pytest.raises(UserError) as error:
        load_config(path, overrides)
    message = str(error.value)
    assert "\n" not in message, "a config error must be one line"
    return message


def test_defaults_validate_and_are_the_sage_recipe():
    config = load_config()
    assert config == TrainConfig()
    assert (config.sampling.rule, config.sampling.eta) == ("sage", 0.5)
    assert config.kl.reference == "dual" and config.policy.equalizer
    assert config.reward.weights == {"vq": 0.5, "mq": 0.5, "ta": 1.0}


def test_yaml_then_overrides_apply_with_yaml_typed_values(tmp_path):
    """Overrides win over the file, and `--set` values are parsed as YAML (numbers, lists, maps)."""
    path = tmp_path / "preset.yaml"
    path.write_text("sampling:\n  eta: 0.3\n  num_steps: 6\noptim:\n  lr: 1.0e-3\n")
    config = load_config(
        path,
        [
            "sampling.eta=0.7",
            "optim.minibatches=4",
            "policy.equalizer=false",
            "reward.weights={vq: 1, ta: 2}",
            "reward.order=[ta, mq, vq]",
            "reward.thresholds=[0.5, 0.6]",
            "run.name=my-run",
        ],
    )
    assert config.sampling.eta == 0.7 and config.sampling.num_steps == 6
    assert config.optim.lr == 1e-3 and config.optim.minibatches == 4
    assert config.policy.equalizer is False
    assert config.reward.weights == {"vq": 1.0, "ta": 2.0}
    assert all(isinstance(w, float) for w in config.reward.weights.values())  # int → float
    assert config.reward.order == ["ta", "mq", "vq"]
    assert config.reward.thresholds == [0.5, 0.6]
    assert config.run.name == "my-run"
    assert load_config(path, ["run.name=null"]).run.name is None


def test_a_dotted_override_of_one_weight_keeps_the_others(tmp_path):
    # Without a file the weights come from the defaults; a preset's mapping is kept the same way.
    assert load_config(None, ["reward.weights.ta=2"]).reward.weights == {
        "vq": 0.5,
        "mq": 0.5,
        "ta": 2.0,
    }
    path = tmp_path / "preset.yaml"
    path.write_text("reward:\n  weights: {vq: 1, mq: 1, ta: 1}\n")
    assert load_config(path, ["reward.weights.mq=3"]).reward.weights == {
        "vq": 1.0,
        "mq": 3.0,
        "ta": 1.0,
    }


def test_a_config_file_that_is_not_a_mapping_is_a_user_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- optim\n- lr\n")
    assert "mapping of sections" in user_error([], path)


@pytest.mark.parametrize("text", ["1e-4", "1E-4", "+1e-4", "5e+2"])
def test_scientific_notation_without_a_dot_is_a_number(text):
    """`--set optim.lr=1e-4` is the documented example, but PyYAML (YAML 1.1) reads 1e-4 as a
    string; guards the bug where that example was rejected as 'expected a number'. (grad_clip:
    a float setting with no upper bound, so 5e+2 is in range.)"""
    assert load_config(None, [f"optim.grad_clip={text}"]).optim.grad_clip == float(text)


def test_saved_config_yaml_loads_back_equal(tmp_path):
    """A run's config.yaml (what resume reads) reproduces the config exactly."""
    config = load_config(None, ["reward.thresholds=[0.7, 0.8]", "optim.lr=2.5e-4"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path) == config


def test_unknown_key_names_it_with_a_did_you_mean_hint():
    message = user_error(["optim.lrr=0.1"])
    assert "'optim.lrr'" in message and "did you mean optim.lr?" in message
    message = user_error(["sampling.etta=0.1"])
    assert "'sampling.etta'" in message and "did you mean sampling.eta?" in message
    message = user_error(["optm.lr=0.1"])
    assert "'optm'" in message and "did you mean optim?" in message


def test_unknown_key_in_a_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kl:\n  refrence: fixed\n")
    message = user_error([], path)
    assert "'kl.refrence'" in message and "kl.reference" in message


@pytest.mark.parametrize(
    ("override", "key", "bad"),
    [
        ("optim.lr=fast", "optim.lr", "'fast'"),
        ("data.group_size=2.5", "data.group_size", "2.5"),
        ("policy.equalizer=maybe", "policy.equalizer", "'maybe'"),
        ("reward.weights=[1, 2]", "reward.weights", "[1, 2]"),
        ("reward.order=ta", "reward.order", "'ta'"),
        ("run.iterations=true", "run.iterations", "True"),
    ],
)
def test_wrong_type_names_the_key_and_the_value(override, key, bad):
    message = user_error([override])
    assert message.startswith(f"{key}:") and bad in message


def test_a_wrong_type_for_a_union_lists_every_form_allowed():
    message = user_error(["reward.lo=[0, 0, 0]"])
    assert "expected float or dict[str, float], got [0, 0, 0]" in message
    assert "expected list[float] or null, got 'x'" in user_error(["reward.thresholds=x"])


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("sampling.eta=-0.1", "sampling.eta", ">= 0"),
        ("data.group_size=1", "data.group_size", ">= 2"),
        ("policy.clip_range=0", "policy.clip_range", "> 0"),
        ("sampling.num_steps=1", "sampling.num_steps", ">= 2"),
        ("optim.beta2=1.5", "optim.beta2", "<= 1"),
        ("sampling.rule=ddim", "sampling.rule", "ode, dance, flow, sage, cps"),
        ("kl.reference=both", "kl.reference", "dual"),
    ],
)
def test_out_of_range_values_name_the_key_and_what_is_allowed(override, key, allowed):
    message = user_error([override])
    assert message.startswith(f"{key}:") and allowed in message


def test_cps_needs_eta_at_most_one():
    message = user_error(["sampling.rule=cps", "sampling.eta=1.5"])
    assert "sampling.eta" in message and "1.5" in message and "[0, 1]" in message
    assert load_config(None, ["sampling.rule=cps", "sampling.eta=1.0"]).sampling.eta == 1.0


def test_an_ode_rollout_cannot_be_trained():
    assert "sampling.rule" in user_error(["sampling.rule=ode"])
    assert "sampling.eta" in user_error(["sampling.eta=0"])


def test_minibatches_must_divide_the_batch():
    message = user_error(
        ["data.prompts_per_iteration=2", "data.group_size=3", "optim.minibatches=4"]
    )
    assert "optim.minibatches" in message and "6 samples" in message
    ok = ["data.prompts_per_iteration=2", "data.group_size=3", "optim.minibatches=3"]
    assert load_config(None, ok).optim.minibatches == 3


@pytest.mark.parametrize("thresholds", ["[0.5, 1.5]", "[-0.1, 0.5]"])
def test_thresholds_outside_the_unit_interval_are_rejected(thresholds):
    message = user_error([f"reward.thresholds={thresholds}"])
    assert message.startswith("reward.thresholds:") and "[0, 1]" in message


def test_other_cross_field_checks_name_their_keys():
    assert "kl.coef_start" in user_error(["kl.coef_start=1e-3", "kl.coef_max=1e-5"])
    assert "reward.weights" in user_error(["reward.weights={}"])


def test_bad_override_syntax_and_missing_files_are_user_errors(tmp_path):
    assert "KEY=VALUE" in user_error(["optim.lr"])
    assert user_error(["optim=3"]).startswith("optim: expected a mapping")  # a section's value
    missing = tmp_path / "nope.yaml"
    assert str(missing) in user_error([], missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("sampling: [unclosed\n")
    assert str(broken) in user_error([], broken)


@pytest.mark.parametrize("preset", ALL_PRESETS, ids=[path.stem for path in ALL_PRESETS])
def test_every_preset_loads_and_keeps_its_method(preset):
    config = load_config(preset)
    raw = yaml.safe_load(preset.read_text())
    assert config.sampling.rule == raw["sampling"]["rule"]
    assert config.kl.reference == raw["kl"]["reference"]
    assert config.selection.strategy == raw["selection"]["strategy"]


def test_presets_cover_every_method():
    assert {"sage", "selfpaced", "flowgrpo", "dancegrpo", "cps", "mixgrpo"} <= set(PRESET_IDS)


def test_describe_lists_every_setting_with_its_default():
    rows = describe(TrainConfig)
    assert [key for key, _, _ in rows] == setting_keys()
    defaults = dict((key, default) for key, default, _ in rows)
    assert defaults["sampling.rule"] == "sage" and defaults["optim.lr"] == 3e-4
    assert all(help_text for _, _, help_text in rows), "every setting needs a one-line help"


def test_an_unparsable_override_value_is_a_one_line_user_error():
    """Guards the bug where `--set reward.weights={vq: 1` escaped as a raw YAML traceback."""
    message = user_error(["reward.weights={vq: 1"])
    assert "reward.weights" in message and "{vq: 1" in message
