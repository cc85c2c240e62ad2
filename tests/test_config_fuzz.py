"""Property: a bad value for any setting of `--list-settings` is one line, exit 2, nothing written.

Hypothesis draws, for a setting chosen among all of them, a value its declaration rules out:
the wrong type, NaN or ±inf, beyond float32 or int64, below or above its bounds, not one of its
choices, empty, holding a NUL; for sizes, more than any machine holds; for names of things
(model, reward, device, paths, run name), one that names nothing usable. `videogrpo train` runs
in-process on the tiny model with that one value, in an empty working directory; it must exit 2
with one stderr line, no traceback, and leave the working and output folders empty.

For every setting and every kind of bad value it can take, the suite draws EXAMPLES_PER_CASE (3)
values, derandomised so every run of the suite checks the same ones; `HYPOTHESIS_SEED=N` (any
N ≠ 0) draws others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PRESETS_DIR, tiny_settings
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from videogrpo.cli import main
from videogrpo.config import TrainConfig
from videogrpo.config.schema import FLOAT32_MAX, INT64_MAX, INT64_MIN, describe
from videogrpo.models.registry import BUILTIN_MODELS
from videogrpo.rewards.registry import BUILTIN_REWARDS
from videogrpo.training.prompts import WORLD_SPLITS

pytestmark = pytest.mark.usefixtures("one_thread")

# Per (setting, kind of bad value); a test below checks the total is ≥ 500 (the acceptance).
EXAMPLES_PER_CASE = 3
SEED = int(os.environ.get("HYPOTHESIS_SEED", "0"))
reseeded = seed(SEED) if SEED else (lambda test: test)
# More samples than any machine holds: 10¹² tiny latents of 6 KiB are 6 PB.
HUGE_SIZES = st.integers(min_value=10**12, max_value=INT64_MAX)
# Settings whose size is an allocation (checked against the machine's memory), or a model
# dimension the tiny model does not have.
SIZES = {
    "data.prompts_per_iteration",
    "data.group_size",
    "eval.samples_per_prompt",
    "model.lora_rank",
    "sampling.num_frames",
    "sampling.height",
    "sampling.width",
}
NAME_MAX = 255  # bytes per file name on Linux file systems
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"), max_size=12)


def leaves(cls: type = TrainConfig, prefix: str = "") -> dict[str, tuple[Any, dict]]:
    """Every setting: dotted key → (type annotation, metadata)."""
    found = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            found.update(leaves(annotation, f"{prefix}{field.name}."))
        else:
            found[f"{prefix}{field.name}"] = (annotation, dict(field.metadata))
    return found


SETTINGS = leaves()


def without_none(annotation: Any) -> tuple[Any, bool]:
    """`X | None` → (X, True); anything else → (itself, False)."""
    options = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, type(int | None)) and type(None) in options:
        rest = [o for o in options if o is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return annotation, False


def ints_out_of_range(metadata: dict) -> st.SearchStrategy:
    parts = [st.integers(min_value=INT64_MAX + 1), st.integers(max_value=INT64_MIN - 1)]
    if metadata.get("ge") is not None:
        parts.append(st.integers(max_value=math.ceil(metadata["ge"]) - 1))
    if metadata.get("gt") is not None:
        parts.append(st.integers(max_value=math.floor(metadata["gt"])))
    if metadata.get("le") is not None:
        parts.append(st.integers(min_value=math.floor(metadata["le"]) + 1))
    return st.one_of(parts)


def floats_out_of_range(metadata: dict) -> st.SearchStrategy:
    parts = [
        st.sampled_from([math.nan, math.inf, -math.inf]),
        st.floats(min_value=FLOAT32_MAX * 1.001, allow_infinity=False),
        st.floats(max_value=-FLOAT32_MAX * 1.001, allow_infinity=False),
        st.integers(min_value=2**129),  # a number, but beyond float32
    ]
    finite = {"allow_nan": False, "allow_infinity": False}
    if metadata.get("ge") is not None:
        parts.append(st.floats(max_value=metadata["ge"], exclude_max=True, **finite))
    if metadata.get("gt") is not None:
        parts.append(st.floats(max_value=metadata["gt"], **finite))
    if metadata.get("le") is not None:
        parts.append(st.floats(min_value=metadata["le"], exclude_min=True, **finite))
    return st.one_of(parts)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def strings_out_of_range(metadata: dict) -> st.SearchStrategy:
    parts = [TEXT.map(lambda text: text + "\0")]
    if not metadata.get("allow_empty"):
        parts.append(st.just(""))
    if metadata.get("choices"):
        parts.append(TEXT.filter(lambda text: text not in metadata["choices"]))
    return st.one_of(parts)


def _out_of_reach(root: str) -> list[st.SearchStrategy]:
    return [
        TEXT.map(lambda text: f"{root}/afile/{text}"),  # under a file
        st.just("/proc/videogrpo-fuzz"),  # a folder nobody may create, even root
        st.integers(NAME_MAX + 1, 4 * NAME_MAX).map(lambda n: f"{root}/{'x' * n}"),
    ]


# For settings that name something: strings that name nothing usable. `{root}` is the
# example's empty working directory (it holds one file, `afile`).
NAMES_OF_NOTHING: dict[str, list[st.SearchStrategy]] = {
    "model.type": [
        TEXT.filter(lambda t: t and t not in BUILTIN_MODELS),
        TEXT.map(lambda t: f"no_such_module_{t.encode().hex()}:Model"),
    ],
    "reward.type": [TEXT.filter(lambda t: t and t not in BUILTIN_REWARDS)],
    "model.path": [TEXT.map(lambda t: f"/nonexistent/{t}"), st.just("x" * (NAME_MAX + 1))],
    "model.device": [st.sampled_from(["cuda", "cuda:7", "gpu", "cpu:x", "tpu"])],
    "data.prompts": [TEXT.filter(lambda t: t and t not in WORLD_SPLITS)],
    "eval.prompts": [TEXT.filter(lambda t: t and t not in WORLD_SPLITS)],
    "run.output_dir": _out_of_reach("{root}"),
    "run.name": [
        st.sampled_from([".", ".."]),
        TEXT.map(lambda t: f"a/{t}"),
        st.integers(NAME_MAX + 1, 4 * NAME_MAX).map(lambda n: "x" * n),
    ],
}


NOT_A_NUMBER = TEXT.filter(lambda text: not _is_number(text))
OTHER_TYPES = {
    int: [st.floats(), NOT_A_NUMBER, st.booleans(), st.lists(st.integers(), max_size=2)],
    float: [NOT_A_NUMBER, st.booleans(), st.lists(st.floats(), min_size=1, max_size=2)],
    bool: [st.integers(), st.floats(), TEXT, st.lists(st.booleans(), max_size=2)],
    str: [st.integers(), st.floats(), st.booleans(), st.lists(TEXT, max_size=2)],
    list: [st.integers(), TEXT, st.dictionaries(TEXT, st.integers(), min_size=1, max_size=2)],
    dict: [st.integers(), TEXT, st.lists(st.integers(), max_size=2)],
    "number or mapping": [NOT_A_NUMBER, st.lists(st.integers(), max_size=2), st.booleans()],
}


def bad_values(key: str) -> dict[str, st.SearchStrategy]:
    """The kinds of bad value for `key`: the wrong type, out of its range, and (for sizes and
    names) one that names nothing usable or more than any machine holds."""
    annotation, metadata = SETTINGS[key]
    inner, optional = without_none(annotation)
    origin = typing.get_origin(inner)
    kind = origin or inner
    if typing.get_origin(inner) in (typing.Union, type(int | None)):
        kind = "number or mapping"
    wrong_type = [*OTHER_TYPES[kind], *([] if optional else [st.none()])]
    kinds = {"wrong type": st.one_of(wrong_type)}
    if inner is int:
        kinds["out of range"] = ints_out_of_range(metadata)
    elif inner is float:
        kinds["out of range"] = floats_out_of_range(metadata)
    elif inner is str:
        kinds["out of range"] = strings_out_of_range(metadata)
    elif origin is list:
        (item,) = typing.get_args(inner)
        bad_item = floats_out_of_range({}) if item is float else st.one_of(st.integers(), st.none())
        kinds["out of range"] = st.lists(bad_item, min_size=1, max_size=3)
    specific = [
        *([HUGE_SIZES] if key in SIZES else []),
        *NAMES_OF_NOTHING.get(key, []),
        *([LIST_SPECIFIC[key]] if key in LIST_SPECIFIC else []),
        *([MAPPING_SPECIFIC[key]] if key in MAPPING_SPECIFIC else []),
    ]
    if specific:
        kinds["names nothing or too big"] = st.one_of(specific)
    return kinds


LIST_SPECIFIC = {
    "model.lora_targets": st.one_of(
        st.just([]), TEXT.map(lambda t: [f"no_such_layer_{t.encode().hex()}"])
    ),
    "reward.order": st.just([]),
    "reward.thresholds": st.lists(
        st.one_of(
            st.floats(max_value=0, exclude_max=True), st.floats(min_value=1, exclude_min=True)
        ),
        min_size=1,
        max_size=3,
    ),
    "reward.additional": st.one_of(
        st.lists(st.integers(), min_size=1, max_size=2),
        st.just([{"options": {}}]),  # no type
        st.just([{"type": "world", "colour": 1}]),  # an unknown key
        TEXT.map(lambda t: [{"type": f"no_such_reward_{t.encode().hex()}"}]),
    ),
}
NAN_MAPPING = st.dictionaries(
    st.sampled_from(["vq", "mq", "ta"]), st.sampled_from([math.nan, math.inf]), min_size=1
)
MAPPING_SPECIFIC = {
    "model.options": st.dictionaries(TEXT.filter(bool), st.integers(), min_size=1, max_size=2),
    "reward.options": st.dictionaries(TEXT.filter(bool), st.integers(), min_size=1, max_size=2),
    "reward.weights": st.one_of(st.just({}), NAN_MAPPING),
    "reward.lo": st.one_of(floats_out_of_range({}), NAN_MAPPING),
    "reward.hi": st.one_of(floats_out_of_range({}), NAN_MAPPING),
}


def as_yaml(value: Any) -> str:
    """The `--set` text that YAML reads back as exactly `value` (types included)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


CASES = [(key, kind) for key in sorted(SETTINGS) for kind in bad_values(key)]


def test_every_listed_setting_is_drawn_and_500_examples_are_drawn_in_all():
    listed = [key for key, _, _ in describe(TrainConfig)]  # what --list-settings prints
    assert sorted(listed) == sorted(SETTINGS) == sorted({key for key, _ in CASES})
    assert len(CASES) * EXAMPLES_PER_CASE >= 500


@pytest.mark.parametrize(("key", "kind"), CASES)
@reseeded
@settings(
    max_examples=EXAMPLES_PER_CASE,
    deadline=None,
    derandomize=SEED == 0,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_bad_value_of_any_setting_is_one_line_exit_2_and_writes_nothing(
    tiny_model_dir, key, kind, data
):
    value = data.draw(bad_values(key)[kind], label="value")
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "afile").write_text("")
        assignment = f"{key}={as_yaml(value).replace('{root}', root)}"
        out = Path(root) / "runs"
        base = tiny_settings(tiny_model_dir, out) + ["model.finetune=lora"]
        args = ["train", str(PRESETS_DIR / "sage.yaml"), "--quiet"]
        for setting in [*base, assignment]:
            args += ["--set", setting]
        stderr, stdout = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(root)
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
                code = main(args)
        finally:
            os.chdir(cwd)
        lines = stderr.getvalue().strip().splitlines()
        assert code == 2, (assignment, code, stderr.getvalue()[-500:])
        assert len(lines) == 1 and "Traceback" not in lines[0], (assignment, lines)
        assert lines[0].startswith("videogrpo train: error: "), lines
        left = sorted(p.name for p in Path(root).iterdir())
        assert left == ["afile"], (assignment, left)
