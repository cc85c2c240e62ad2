"""Bad input to `train`, `sample` and `eval`: one line, exit 2, no traceback, nothing written.

Issue 17 item 2, beyond the settings (tests/test_config_fuzz.py draws those): files that are
not text, model folders with wrong types, output locations that cannot be written, sizes no
machine holds, seeds beyond what torch takes, command-line flags out of range; and a config
error reported before torch is imported.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HELDOUT_PROMPT, PRESETS_DIR, tiny_settings

from videogrpo.cli import main
from videogrpo.config import load_config
from videogrpo.config.settings import MAX_SEED
from videogrpo.errors import UserError
from videogrpo.runs.rundir import create_run_dir

pytestmark = pytest.mark.usefixtures("one_thread")

HEAVY_MODULES = ("torch", "diffusers", "transformers", "peft", "safetensors")


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def train(capsys, model_dir, output_dir, *overrides) -> tuple[int, str]:
    args = ["train", PRESETS_DIR / "sage.yaml", "--quiet"]
    for setting in [*tiny_settings(model_dir, output_dir), *overrides]:
        args += ["--set", setting]
    return cli(capsys, *args)


@pytest.fixture
def files(tmp_path):
    """A folder to hold inputs, and an empty one every test must leave empty."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "out").mkdir()
    yield tmp_path / "inputs", tmp_path / "out"
    assert not any((tmp_path / "out").iterdir()), list((tmp_path / "out").rglob("*"))


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"optim:\n  lr: \xff\n", "not UTF-8"), (b"optim:\n  lr: 1e-4\x00\n", "not valid YAML")],
)
def test_a_config_file_that_is_not_text_is_named(capsys, files, content, needle):
    inputs, _ = files
    config = inputs / "bad.yaml"
    config.write_bytes(content)
    code, err = cli(capsys, "train", config, "--quiet")
    assert_refused(code, err, str(config), needle)
    code, err = cli(capsys, "train", inputs, "--quiet")  # a folder, not a file
    assert_refused(code, err, str(inputs), "not found")


@pytest.mark.parametrize(
    ("content", "needle"), [(b"a red square \xff\n", "not UTF-8"), (b"a red\x00 square\n", "NUL")]
)
def test_a_prompt_file_that_is_not_text_is_named(capsys, files, tiny_model_dir, content, needle):
    inputs, out = files
    prompts = inputs / "prompts.txt"
    prompts.write_bytes(content)
    code, err = train(capsys, tiny_model_dir, out, f"data.prompts={prompts}")
    assert_refused(code, err, str(prompts), needle)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("config.json", {"num_layers": "one"}),
        ("config.json", {"patch_size": 3}),
        ("vocabulary.json", {"a": 1}),
        ("vocabulary.json", ["a", 2]),
    ],
)
def test_a_model_folder_with_wrong_types_is_named(capsys, files, tiny_model_dir, name, content):
    inputs, out = files
    model = shutil.copytree(tiny_model_dir, inputs / "model")
    if name == "config.json":
        fields = json.loads((model / name).read_text())
        content = {**fields, **content}
    (model / name).write_text(json.dumps(content))
    code, err = train(capsys, model, out)
    assert_refused(code, err, str(model / name))


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("data.group_size=1000000000000", "data.prompts_per_iteration × data.group_size"),
        ("eval.samples_per_prompt=1000000000000", "eval.samples_per_prompt"),
        ("model.lora_rank=1000000000", "model.lora_rank"),
        ("run.seed=18446744073709551616", "run.seed"),
        ("eval.seed=9223372036854775808", "eval.seed"),
        ("run.threads=1099511627776", "run.threads"),
        ("sampling.num_steps=100000", "sampling.num_steps"),
    ],
)
def test_sizes_and_seeds_beyond_the_machine_or_torch_are_refused_before_writing(
    capsys, files, tiny_model_dir, setting, needle
):
    _, out = files
    code, err = train(capsys, tiny_model_dir, out, "model.finetune=lora", setting)
    assert_refused(code, err, needle)


def test_the_largest_seeds_allowed_are_ones_torch_takes(tiny_model_dir, tmp_path):
    """run.seed + 1 (the selection stream) and eval.seed + sample index stay below 2^64."""
    from conftest import make_trainer

    from videogrpo.runs.evaluation import eval_seeds
    from videogrpo.training.rollout import initial_noise

    trainer = make_trainer(tiny_model_dir, tmp_path, "sage", [f"run.seed={MAX_SEED}"])
    prompts, seeds = trainer.next_prompts()
    selection = trainer.selector.select(4, len(prompts), generator=trainer.selection_generator)
    assert selection.sde_mask.shape == (4,)
    noise = initial_noise(trainer.model, eval_seeds(MAX_SEED, 1000, 2)[-4:])
    assert noise.isfinite().all()
    with pytest.raises(UserError, match="run.seed"):
        load_config(None, [f"run.seed={MAX_SEED + 1}"])


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("a file in the way", "is a file, not a folder"),
        ("a name too long", "longer than the 255 bytes"),
        ("a folder nobody may create (/proc)", "No such file or directory"),
    ],
)
def test_a_run_directory_that_cannot_be_made_is_refused_and_nothing_is_left(
    capsys, files, tiny_model_dir, where, needle
):
    inputs, out = files
    (inputs / "file").write_text("")
    output_dir, name = {
        "a file in the way": (inputs / "file", "run"),
        "a name too long": (out, "x" * 300),
        "a folder nobody may create (/proc)": ("/proc/videogrpo-test", "run"),  # even root
    }[where]
    code, err = train(
        capsys, tiny_model_dir, out, f"run.output_dir={output_dir}", f"run.name={name}"
    )
    assert_refused(code, err, "cannot create run directory", needle)
    assert not Path("/proc/videogrpo-test").exists()


def test_a_run_directory_made_half_way_is_removed(tmp_path, monkeypatch):
    """mkdir -p that fails at the third folder (e.g. a full disk) removes the two it made."""
    made = []
    original = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if len(made) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(UserError, match="No space left on device"):
        create_run_dir(tmp_path / "a" / "b" / "run")
    assert list(tmp_path.iterdir()) == []


def test_sample_and_eval_check_their_flags_and_outputs_before_any_work(
    capsys, files, tiny_model_dir
):
    inputs, out = files
    sample = ["sample", "--prompt", HELDOUT_PROMPT, "--model", tiny_model_dir, "--steps", "2"]
    evaluate = ["eval", "--model", tiny_model_dir, "--max-prompts", "1", "--steps", "2"]
    cases = [
        (sample + ["--out", out], "is a folder"),
        (sample + ["--out", inputs / "missing" / "clip.mp4"], "does not exist"),
        (sample + ["--out", inputs / "c.mp4", "--shift", "0"], "--shift"),
        (sample + ["--out", inputs / "c.mp4", "--seed", str(2**64)], "--seed"),
        (sample + ["--out", inputs / "c.mp4", "--eta", "nan"], "--eta"),
        (sample + ["--out", inputs / "c.mp4", "--rule", "fast"], "--rule"),
        (sample + ["--out", inputs / "c.mp4", "--steps", "two"], "--steps"),
        (evaluate + ["--json", out], "is a folder"),
        (evaluate + ["--json", inputs / "missing" / "e.json"], "does not exist"),
        (evaluate + ["--max-prompts", "-1"], "--max-prompts"),
        (evaluate + ["--samples-per-prompt", "1000000000000"], "--samples-per-prompt"),
        (evaluate + ["--guidance", "1e400"], "--guidance"),
    ]
    for args, needle in cases:
        code, err = cli(capsys, *args)
        assert_refused(code, err, needle)
    assert sorted(p.name for p in inputs.iterdir()) == []


def test_a_config_error_is_reported_before_torch_is_imported(tmp_path):
    """The CLI checks the config first: a misspelt key costs no torch import (~10 s cold)."""
    probe = (
        "import sys, time\n"
        "from videogrpo.cli import main\n"
        "start = time.monotonic()\n"
        "codes = [main(['train', '--set', 'optim.lrr=1e-4']),\n"
        f"         main(['train', '--resume', {str(tmp_path)!r}, '--set', 'optim.lr=-1']),\n"
        "         main(['sample', '--prompt', 'a', '--shift', '0'])]\n"
        "print(codes, time.monotonic() - start)\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    (tmp_path / "config.yaml").write_text("run:\n  iterations: 2\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    elapsed = time.monotonic() - started
    codes, imported = result.stdout.strip().splitlines()
    assert codes.startswith("[2, 2, 2]"), result.stdout + result.stderr
    assert imported == "[]"
    assert len(result.stderr.strip().splitlines()) == 3, result.stderr
    # The start-up itself (Python, yaml) is well under 2 s even on a loaded machine; torch
    # alone takes 4-10 s there, so this bound also catches an import that slips back in.
    assert elapsed < 2.0, elapsed
