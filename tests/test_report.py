"""The run report: one self-contained page whose charts, numbers and videos follow the run dir."""

import json
import math
import re

import numpy as np
import pytest
import yaml

from videogrpo.cli import main
from videogrpo.errors import UserError
from videogrpo.runs.report import REPORT_FILE, write_report
from videogrpo.runs.video_io import write_gif

ITERATIONS = 6
EVAL_ITERATIONS = (0, 5)
CLIPS = 3
SUMMARY_BEFORE = {"vq": 0.6123, "mq": 0.5012, "ta": 0.4017, "composite": 1.0311}
SUMMARY_AFTER = {"vq": 0.7234, "mq": 0.5523, "ta": 0.6044, "composite": 1.4521}
BASE_CHARTS = {
    "chart-composite-reward",
    "chart-reward-vq",
    "chart-reward-mq",
    "chart-reward-ta",
    "chart-groups-with-zero-reward-std-no-learning-signal",
    "chart-reward-std-within-groups-saturation",
    "chart-held-out-eval-diagnostics",
    "chart-ppo-clip-fraction",
    "chart-policy-loss",
    "chart-approx-kl-to-the-rollout-policy",
    "chart-kl-terms",
    "chart-kl-coefficient-t-log-scale",
    "chart-importance-ratio",
    "chart-gradient-norm",
    "chart-per-step-gradient-norm-before-equalizer",
    "chart-per-step-gradient-norm-after-equalizer",
    "chart-seconds-per-iteration-by-phase-stacked",
    "chart-throughput-samples-s",
}
CURRICULUM_CHARTS = {
    "chart-curriculum-weights-mean-std-over-groups",
    "chart-component-rewards-train-mean",
    "chart-curriculum-competence",
    "chart-hoyer-sparsity-of-group-centred-scores",
    "chart-curriculum-stage-mean-over-groups",
}


def metrics_row(i, curriculum):
    row = {"iteration": i, "reward/composite_mean": 1.0 + 0.1 * i, "reward/composite_std": 0.2}
    for k, name in enumerate(("vq", "mq", "ta")):
        row[f"reward/{name}_mean"] = 0.4 + 0.05 * i + 0.1 * k
        row[f"reward/{name}_std"] = 0.05
        row[f"reward/{name}_group_std"] = 0.03
    row |= {
        "reward/zero_std_group_fraction": 0.125,
        "reward/within_group_std": 0.04,
        "reward/weighted_mean": 0.9 + 0.1 * i,
        "policy/clip_frac_pos": 0.01 * i,
        "policy/clip_frac_neg": 0.02,
        "policy/loss": -0.01 * i,
        "policy/approx_kl": 1e-4 * (i + 1),
        "policy/ratio_mean": 1.0,
        "policy/ratio_max": 1.0 + 0.01 * i,
        "kl/pos": 1e-3,
        "kl/vel": 2e-3,
        "kl/coef": 1e-7 * 10 ** (i / 2),
        "grad/norm": 0.5,
        "time/rollout": 2.0,
        "time/reward": 0.2,
        "time/reference": 0.3,
        "time/update": 1.5,
        "time/samples_per_second": 8.0,
    }
    for k in range(3):
        row[f"grad/step_norm_before/{k}"] = 10.0 ** (k - 1)
        row[f"grad/step_norm_after/{k}"] = 1.0
    if curriculum:
        for name in ("vq", "mq", "ta"):
            row[f"curriculum/weight_mean/{name}"] = 1 / 3
            row[f"curriculum/weight_std/{name}"] = 0.01
            row[f"curriculum/competence/{name}"] = 0.1 * i
            row[f"curriculum/sparsity/{name}"] = 0.2
        row["curriculum/stage_mean"] = i // 3
    return row


def make_run(root, curriculum=False, nan_key=None, finished=True):
    run = root / "sage-0"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"run": {"name": "sage-0"}, "sampling": {"rule": "sage", "eta": 0.5}})
    )
    with open(run / "metrics.jsonl", "w") as f:
        for i in range(ITERATIONS):
            row = metrics_row(i, curriculum)
            if nan_key and i in (2, 4):
                row[nan_key] = math.nan if i == 2 else None
            f.write(json.dumps(row) + "\n")
    with open(run / "eval.jsonl", "w") as f:
        for i, values in zip(EVAL_ITERATIONS, (SUMMARY_BEFORE, SUMMARY_AFTER), strict=True):
            f.write(json.dumps({"iteration": i, **values, "coherent_fraction": 0.5}) + "\n")
    rng = np.random.default_rng(0)
    for i in EVAL_ITERATIONS:
        folder = run / "eval_videos" / f"iter_{i:06d}"
        folder.mkdir(parents=True)
        prompts = []
        for n in range(CLIPS):
            write_gif(folder / f"{n:03d}.gif", rng.random((4, 8, 8, 3)), upscale=2)
            rewards = {"vq": 0.25 * n + 0.01 * i, "ta": 0.5}
            prompts.append({"file": f"{n:03d}.gif", "prompt": f"a red ball <{n}>", "seed": n})
            prompts[-1]["rewards"] = rewards
        (folder / "prompts.json").write_text(json.dumps(prompts))
    if finished:
        summary = {
            "config": {},
            "iterations": ITERATIONS,
            "eval_before": SUMMARY_BEFORE,
            "eval_after": SUMMARY_AFTER,
            "wall_seconds": 125.0,
        }
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def chart_ids(page):
    return set(re.findall(r'<figure class="chart" id="([^"]+)"', page))


def test_report_has_one_svg_per_chart_and_the_summary_numbers(tmp_path):
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / REPORT_FILE
    page = path.read_text()
    assert chart_ids(page) == BASE_CHARTS
    assert page.count("<svg") == len(BASE_CHARTS)
    table = page[page.index('id="before-after"') :]
    for values in (SUMMARY_BEFORE, SUMMARY_AFTER):
        for value in values.values():
            assert f"{value:.4g}" in table
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no network
    assert "<script" not in page
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp file left


def test_report_embeds_each_eval_clip_before_and_after_with_captions(tmp_path):
    page = write_report(make_run(tmp_path)).read_text()
    assert page.count('<img src="data:image/gif;base64,') == CLIPS * len(EVAL_ITERATIONS)
    assert "iter 0" in page and "iter 5" in page
    assert "a red ball &lt;2&gt;" in page  # prompts are escaped
    assert "vq 0.5 → 0.55" in page and "seed 1" in page


def test_curriculum_charts_appear_only_with_curriculum_keys(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = chart_ids(write_report(make_run(tmp_path / "a")).read_text())
    paced = chart_ids(write_report(make_run(tmp_path / "b", curriculum=True)).read_text())
    assert not plain & CURRICULUM_CHARTS
    assert paced == BASE_CHARTS | CURRICULUM_CHARTS


def test_nan_and_null_metrics_become_gaps_not_nan_in_svg(tmp_path):
    page = write_report(make_run(tmp_path, nan_key="reward/composite_mean")).read_text()
    svg_data = " ".join(re.findall(r'\b(?:d|cx|cy|x|y|x1|x2|y1|y2)="([^"]*)"', page))
    assert svg_data and not re.search(r"nan|inf", svg_data, re.IGNORECASE)
    composite = page[page.index('id="chart-composite-reward"') :]
    composite = composite[: composite.index("</svg>")]
    lines = re.findall(r'<path d="(M[^"]*)" fill="none"', composite)
    assert len(lines) == 2  # the weighted line whole; of the train line only iterations 0-1 ...
    assert [line.count(" L") for line in lines] == [1, ITERATIONS - 1]  # gaps at 2 and 4 ...
    assert composite.count("<circle") == 2 + len(EVAL_ITERATIONS)  # ... drawn as points


def test_partial_run_with_only_metrics_still_reports(tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    rows = [metrics_row(0, False), {"iteration": 1, "reward/composite_mean": 1.2}]
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"iteration": 2, "rew'  # cut mid-line
    (run / "metrics.jsonl").write_text(text)
    page = write_report(run).read_text()
    assert "chart-composite-reward" in page
    assert "partial" in page and "skipped 1 unreadable line" in page
    assert "before-after" not in page and "<img" not in page


def test_single_point_and_unknown_metrics_are_drawn(tmp_path):
    run = tmp_path / "one"
    run.mkdir()
    row = {"iteration": 0, "reward/composite_mean": 0.7, "lr": 3e-4, "custom/thing": 2}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    page = write_report(run).read_text()
    assert chart_ids(page) == {"chart-composite-reward", "chart-misc", "chart-custom"}
    assert page.count("<circle") == 3


def test_missing_run_dir_and_missing_metrics_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        write_report(tmp_path / "nope")
    with pytest.raises(UserError, match="metrics.jsonl"):
        write_report(tmp_path)


def test_command_prints_the_path_and_fails_in_one_line(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / REPORT_FILE)

    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err and "metrics.jsonl" in err
