"""`videogrpo train | sample | eval` through the CLI entry point, on the tiny random model.

Guards the user-facing contract: bad input is exit status 2 with ONE stderr line naming the key
(or path), and nothing is written to the output folder until config, model and prompts are
validated (run.py: "nothing is created until the config, model and prompts have been validated").
"""

from __future__ import annotations

import json

import pytest
from conftest import HELDOUT_PROMPT, PRESETS_DIR, setting_keys, tiny_settings

from videogrpo.cli import main
from videogrpo.runs.video_io import read_video

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_args(model_dir, output_dir, preset: str, *overrides: str) -> list[str]:
    settings = tiny_settings(model_dir, output_dir) + list(overrides)
    args = ["train", PRESETS_DIR / f"{preset}.yaml", "--quiet"]
    for setting in settings:
        args += ["--set", setting]
    return args


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_nothing_written(output_dir) -> None:
    assert not output_dir.exists() or not any(output_dir.iterdir()), list(output_dir.iterdir())


@pytest.mark.parametrize(
    ("preset", "override", "key"),
    [
        ("sage", "optim.lrr=1e-4", "optim.lrr"),
        ("sage", "optim.lr=fast", "optim.lr"),
        ("sage", "sampling.eta=-0.5", "sampling.eta"),
        ("sage", "data.group_size=1", "data.group_size"),
        ("sage", "policy.clip_range=0", "policy.clip_range"),
        ("sage", "optim.minibatches=3", "optim.minibatches"),  # batch of 2 × 2 = 4 samples
        ("cps", "sampling.eta=1.5", "sampling.eta"),
        ("selfpaced", "reward.thresholds=[0.5, 1.2]", "reward.thresholds"),
        # Two components left in the order but the preset's two gates kept: one gate too many.
        ("selfpaced", "reward.order=[vq, mq]", "reward (staged curriculum): thresholds"),
        ("selfpaced", "reward.order=[vq, mq, motion]", "'motion'"),
        ("dancegrpo", "data.train_extremes=2", "exceed data.group_size 2"),
        ("selfpaced", "reward.lo={vq: 0.5, mq: 0}", "lo = {'vq': 0.5, 'mq': 0.0}: missing ['ta']"),
        # Valid one by one, impossible together: 4 of the 4 steps from random_fraction, a window
        # longer than the 3 SDE steps. Guards the bug where these crashed with a traceback at
        # iteration 1, after the run directory and the first eval had been written.
        ("dancegrpo", "selection.fraction=1.0", "selection"),
        ("mixgrpo", "selection.window_size=4", "selection"),
        # sage cannot step from σ₁ = 0.9 when it must stay below 1 − clamp = 0.5: a core
        # traceback before this was a config-time error.
        ("sage", "sampling.sigma_clamp=0.5", "sampling (rule 'sage'"),
    ],
)
def test_bad_settings_exit_2_with_one_line_and_no_run_directory(
    tiny_model_dir, tmp_path, capsys, preset, override, key
):
    output_dir = tmp_path / "runs"
    code, _, err = run_cli(capsys, *train_args(tiny_model_dir, output_dir, preset, override))
    assert_one_line_error(code, err, "videogrpo train: error:", key)
    assert_nothing_written(output_dir)


def test_training_prompts_outside_the_grammar_fail_before_the_run_starts(
    tiny_model_dir, tmp_path, capsys
):
    """Guards the bug where a bad prompt file failed only at the first reward, leaving a run
    directory with an eval and a checkpoint behind."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{HELDOUT_PROMPT}\na purple elephant dancing\n")
    output_dir = tmp_path / "runs"
    args = train_args(tiny_model_dir, output_dir, "sage", f"data.prompts={prompts}")
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "purple elephant", "colour: red")
    assert_nothing_written(output_dir)


def test_a_missing_model_folder_is_named(tmp_path, capsys):
    output_dir = tmp_path / "runs"
    missing = tmp_path / "no_model"
    code, _, err = run_cli(capsys, *train_args(missing, output_dir, "sage"))
    assert_one_line_error(code, err, str(missing))
    assert_nothing_written(output_dir)


def test_resume_errors_name_the_directory(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(capsys, "train", "--resume", missing)
    assert_one_line_error(code, err, str(missing))
    assert not missing.exists()

    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("run:\n  iterations: 2\n")
    code, _, err = run_cli(capsys, "train", PRESETS_DIR / "sage.yaml", "--resume", run_dir)
    assert_one_line_error(code, err, "--resume")
    code, _, err = run_cli(capsys, "train", "--resume", run_dir, "--restart", run_dir)
    assert_one_line_error(code, err, "--restart", "--resume")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_an_existing_run_directory_is_not_overwritten(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "keep.txt").write_text("mine")
    args = train_args(tiny_model_dir, tmp_path / "runs", "sage", "run.name=taken")
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, str(run_dir), "--resume")
    assert sorted(p.name for p in run_dir.iterdir()) == ["keep.txt"]


def test_list_settings_lists_every_key(capsys):
    code, out, _ = run_cli(capsys, "train", "--list-settings")
    assert code == 0
    listed = [line.split(" = ")[0] for line in out.splitlines() if not line.startswith(" ")]
    assert listed == setting_keys()


def test_train_then_resume_with_more_iterations(tiny_model_dir, tmp_path, capsys):
    """`train` prints the config and the before/after table; `--resume RUN --set
    run.iterations=2` continues the same run directory to iteration 2."""
    run_dir = tmp_path / "runs" / "r"
    args = train_args(tiny_model_dir, tmp_path / "runs", "cps", "run.iterations=1", "run.name=r")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "rule: cps" in out and "before -> after" in out
    assert f"report: {run_dir / 'report.html'}" in out

    resume = ["train", "--resume", run_dir, "--set", "run.iterations=2", "--quiet"]
    code, out, err = run_cli(capsys, *resume)
    assert code == 0, err
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in metrics] == [1, 2]
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 2
    assert "iterations: 2" in (run_dir / "config.yaml").read_text()
    evals = (run_dir / "eval.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in evals] == [0, 1, 2]

    # Finished at 2: resuming without raising the total is refused, and nothing is rewritten.
    saved = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, _, err = run_cli(capsys, "train", "--resume", run_dir, "--quiet")
    assert_one_line_error(code, err, "already finished 2 iterations", "run.iterations=4")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == saved


def test_sample_writes_an_mp4_with_every_frame(tiny_model_dir, tmp_path, capsys):
    out_file = tmp_path / "clip.mp4"
    args = ["sample", "--prompt", HELDOUT_PROMPT, "--model", tiny_model_dir, "--out", out_file]
    code, _, err = run_cli(capsys, *args, "--steps", "2")
    assert code == 0, err
    video = read_video(out_file)
    assert video.shape[0] == 8 and video.shape[-1] == 3
    assert out_file.with_suffix(".gif").is_file()


def test_sample_rejects_words_the_model_does_not_know(tiny_model_dir, tmp_path, capsys):
    """Guards the bug where an unknown word silently became <unk> and sampled garbage."""
    out_file = tmp_path / "clip.mp4"
    args = ["sample", "--prompt", "a purple elephant", "--model", tiny_model_dir]
    code, _, err = run_cli(capsys, *args, "--out", out_file, "--steps", "2")
    assert_one_line_error(code, err, "purple", "elephant", "square, circle")
    assert not out_file.exists()


def test_eval_writes_json_with_every_number(tiny_model_dir, tmp_path, capsys):
    out_file = tmp_path / "out.json"
    args = ["eval", "--model", tiny_model_dir, "--max-prompts", "2", "--steps", "2"]
    code, _, err = run_cli(capsys, *args, "--json", out_file)
    assert code == 0, err
    numbers = json.loads(out_file.read_text())
    assert {"vq", "mq", "ta", "composite", "coherent_fraction"} <= numbers.keys()
    assert numbers["num_prompts"] == 2 and "within_group_std" not in numbers
    attributes = ("background", "colour", "shape", "direction", "speed")
    assert all(0.0 <= numbers[f"attribute_{name}"] <= 1.0 for name in attributes)

    spread = ["--rule", "sage", "--eta", "0.5", "--samples-per-prompt", "2"]
    code, _, err = run_cli(capsys, *args, *spread, "--json", out_file)
    assert code == 0, err
    numbers = json.loads(out_file.read_text())
    assert numbers["rule"] == "sage" and numbers["within_group_std"] >= 0.0


def test_eval_rejects_prompts_outside_the_grammar_listing_the_vocabulary(
    tiny_model_dir, tmp_path, capsys
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a purple elephant dancing\n")
    args = ["eval", "--model", tiny_model_dir, "--prompts", prompts, "--steps", "2"]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "purple elephant", "colour: red, green", "shape: square")
