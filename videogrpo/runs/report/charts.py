"""Which charts a run gets: metrics.jsonl and eval.jsonl keys turned into titled chart sections.

This is where the report's reading of the training logs lives: which keys belong together
(reward means with their std bands and eval points, clip fractions, KL terms, per-step gradient
norms, phase timings, curriculum weights), in which colours, and under which section title. It
is separate from `svg.py` (how a chart is drawn) and `page.py` (how sections are laid out) so
that logging a new metric only needs a change here. Every key a chart uses is remembered, and
the keys no chart claimed are charted last under "Other metrics", so nothing logged goes unseen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from videogrpo.runs.report.data import COMPOSITE, EVAL_AXES, ITERATION_KEY, Row
from videogrpo.runs.report.svg import Chart, Series, y_range

# Unrecognised metrics are still charted, grouped by prefix, this many lines to a chart.
MAX_LINES_PER_OTHER_CHART = 6
STACK_OPACITY = 0.55
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#bab0ac",
)
COMPOSITE_COLOR = "#222222"
# reward/weighted_mean: the composite under the run's static or self-paced weights, no component.
WEIGHTED = "weighted"
WEIGHTED_LABEL = "weighted (advantage input)"
WEIGHTED_COLOR = "#888888"
EVAL_COLOR = "#d62728"
# Per-step gradient norms: early (noisy) steps blue through late (clean) steps orange.
STEP_RAMP = ("#1f4e9c", "#e8702a")


@dataclass
class ChartSection:
    """A titled group of charts on the page, with an optional one-line explanation."""

    title: str
    charts: list[Chart]
    intro: str = ""


class _Metrics:
    """Columns of metrics.jsonl; remembers the keys charts used so leftovers are charted too."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.keys = list(dict.fromkeys(k for row in rows for k in row if k != ITERATION_KEY))
        self.used: set[str] = set()

    def matching(self, pattern: str) -> list[re.Match[str]]:
        """Full matches of `pattern` among the keys, in first-logged order."""
        return [m for key in self.keys if (m := re.fullmatch(pattern, key))]

    def series(self, key: str, label: str, color: str, std_key: str | None = None) -> Series | None:
        """The rows that logged `key` (a missing key connects the line; NaN breaks it)."""
        if key not in self.keys:
            return None
        self.used.add(key)
        rows = [row for row in self.rows if key in row]
        xs = [row[ITERATION_KEY] for row in rows]
        ys = [row[key] for row in rows]
        if std_key not in self.keys:
            return Series(label, xs, ys, color)
        self.used.add(std_key)
        stds = [row.get(std_key, math.nan) for row in rows]
        lows = [y - s for y, s in zip(ys, stds, strict=True)]
        highs = [y + s for y, s in zip(ys, stds, strict=True)]
        return Series(label, xs, ys, color, lows=lows, highs=highs)

    def lines(self, title: str, keys: Iterable[str], **chart: Any) -> Chart:
        """One chart with a line per key, labelled by the key's last path part."""
        series = [
            self.series(key, key.rsplit("/", 1)[-1], PALETTE[i % len(PALETTE)])
            for i, key in enumerate(k for k in keys if k in self.keys)
        ]
        return Chart(title, [s for s in series if s], **chart)


def chart_sections(metric_rows: list[Row], evals: list[Row]) -> list[ChartSection]:
    """The page's chart sections in order; "Other metrics" comes last to collect the leftovers."""
    metrics = _Metrics(metric_rows)
    names = _component_names(metrics, evals)
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    return [
        ChartSection(
            "Rewards",
            _reward_charts(metrics, evals, colors),
            "training rollouts (mean ± std over the batch) with held-out eval points in red",
        ),
        ChartSection("Self-paced curriculum", _curriculum_charts(metrics, colors)),
        ChartSection("Trust region and optimisation diagnostics", _diagnostic_charts(metrics)),
        ChartSection("Time", _timing_charts(metrics)),
        ChartSection("Other metrics", _other_charts(metrics)),
    ]


def _eval_series(
    evals: list[Row],
    key: str,
    label: str = "held-out eval",
    color: str = EVAL_COLOR,
    markers: bool = True,
) -> Series | None:
    """Eval results of `key`: points over a training curve, or a line of their own."""
    rows = [row for row in evals if key in row]
    if not rows:
        return None
    xs = [row[ITERATION_KEY] for row in rows]
    return Series(label, xs, [row[key] for row in rows], color, markers=markers)


def _component_names(metrics: _Metrics, evals: list[Row]) -> list[str]:
    """Reward components logged in training or eval: the eval axes first, then the rest."""
    logged = [m.group(1) for m in metrics.matching(r"reward/(.+)_mean")]
    logged += [m.group(1) for m in metrics.matching(r"curriculum/weight_mean/(.+)")]
    logged += [axis for axis in EVAL_AXES if any(axis in row for row in evals)]
    found = set(logged) - {COMPOSITE, WEIGHTED}
    return [a for a in EVAL_AXES if a in found] + sorted(found - set(EVAL_AXES))


def _reward_charts(metrics: _Metrics, evals: list[Row], colors: dict[str, str]) -> list[Chart]:
    charts = []
    for name in [COMPOSITE, *colors]:
        color = colors.get(name, COMPOSITE_COLOR)
        series = [
            metrics.series(
                f"reward/{name}_mean", "train mean ± std", color, std_key=f"reward/{name}_std"
            ),
            _eval_series(evals, name),
        ]
        if name == COMPOSITE:  # what the advantages were computed from, beside the equal mean
            series.append(metrics.series(f"reward/{WEIGHTED}_mean", WEIGHTED_LABEL, WEIGHTED_COLOR))
        title = "Composite reward" if name == COMPOSITE else f"Reward: {name}"
        charts.append(Chart(title, [s for s in series if s]))
    charts.append(
        metrics.lines(
            "Groups with zero reward std (no learning signal)",
            ["reward/zero_std_group_fraction"],
        )
    )
    charts.append(
        metrics.lines(
            "Reward failures: samples without a score (no advantage) and failed calls",
            ["reward/failed_samples", "reward/failed_calls"],
        )
    )
    charts.append(
        metrics.lines(
            "Share of samples without a score (reward.max_failed_fraction stops the run)",
            ["reward/failed_fraction"],
        )
    )
    spread = [
        metrics.series("reward/within_group_std", COMPOSITE, COMPOSITE_COLOR),
        *(metrics.series(f"reward/{name}_group_std", name, c) for name, c in colors.items()),
    ]
    charts.append(Chart("Reward std within groups (saturation)", [s for s in spread if s]))
    extra = [k for k in dict.fromkeys(k for row in evals for k in row) if k not in colors]
    extra = [k for k in extra if k not in (ITERATION_KEY, COMPOSITE)]
    series = [
        _eval_series(evals, key, key, PALETTE[i % len(PALETTE)], markers=False)
        for i, key in enumerate(extra)
    ]
    charts.append(Chart("Held-out eval diagnostics", [s for s in series if s]))
    return charts


def _step_keys(metrics: _Metrics, stage: str) -> list[str]:
    """Per-step keys `grad/step_norm_<stage>/<k>` in step order."""
    found = metrics.matching(rf"grad/step_norm_{stage}/(.+)")
    found.sort(
        key=lambda m: (0, int(m.group(1)), "") if m.group(1).isdigit() else (1, 0, m.group(1))
    )
    return [m.group(0) for m in found]


def _ramp(position: float) -> str:
    """A colour between STEP_RAMP's ends, `position` in [0, 1]."""
    start, end = (tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in STEP_RAMP)
    mixed = (round(a + (b - a) * position) for a, b in zip(start, end, strict=True))
    return "#" + "".join(f"{channel:02x}" for channel in mixed)


def _diagnostic_charts(metrics: _Metrics) -> list[Chart]:
    kl_terms = [k for k in metrics.keys if k.startswith("kl/") and k != "kl/coef"]
    charts = [
        metrics.lines(
            "PPO clip fraction",
            ["policy/clip_frac_pos", "policy/clip_frac_neg", "policy/clip_frac"],
        ),
        metrics.lines("Policy loss", ["policy/loss"]),
        metrics.lines("Approx KL to the rollout policy", ["policy/approx_kl"]),
        metrics.lines("KL terms", kl_terms),
        metrics.lines("KL coefficient λ_t (log scale)", ["kl/coef"], log_y=True),
        metrics.lines(
            "Importance ratio", ["policy/ratio_mean", "policy/ratio_max", "policy/ratio_min"]
        ),
        metrics.lines("Gradient norm", ["grad/norm"]),
    ]
    before, after = _step_keys(metrics, "before"), _step_keys(metrics, "after")
    shared = y_range([row[k] for row in metrics.rows for k in before + after if k in row], log=True)
    for stage, keys in (("before", before), ("after", after)):
        series = [
            metrics.series(key, f"step {key.rsplit('/', 1)[-1]}", _ramp(i / max(1, len(keys) - 1)))
            for i, key in enumerate(keys)
        ]
        charts.append(
            Chart(
                f"Per-step gradient norm {stage} equalizer",
                [s for s in series if s],
                log_y=True,
                y_range=shared,
                note="log scale, shared with the other per-step chart; blue: early steps",
            )
        )
    return charts


def _timing_charts(metrics: _Metrics) -> list[Chart]:
    phases = [k for k in metrics.keys if k.startswith("time/") and k != "time/samples_per_second"]
    rows = [row for row in metrics.rows if any(k in row for k in phases)]
    xs = [row[ITERATION_KEY] for row in rows]
    base = [0.0] * len(rows)
    layers = []
    for i, key in enumerate(phases):
        metrics.used.add(key)
        values = [row.get(key, math.nan) for row in rows]
        top = [b + (v if math.isfinite(v) else 0.0) for b, v in zip(base, values, strict=True)]
        layers.append(
            Series(
                key.split("/", 1)[1],
                xs,
                top,
                PALETTE[i % len(PALETTE)],
                lows=base,
                highs=top,
                fill_opacity=STACK_OPACITY,
            )
        )
        base = top
    return [
        Chart("Seconds per iteration, by phase (stacked)", layers),
        metrics.lines("Throughput (samples / s)", ["time/samples_per_second"]),
    ]


def _curriculum_charts(metrics: _Metrics, colors: dict[str, str]) -> list[Chart]:
    """Self-paced weights beside the component rewards they react to; empty without curriculum."""
    if not any(key.startswith("curriculum/") for key in metrics.keys):
        return []
    weights = [
        metrics.series(
            m.group(0),
            m.group(1),
            colors[m.group(1)],
            std_key=f"curriculum/weight_std/{m.group(1)}",
        )
        for m in metrics.matching(r"curriculum/weight_mean/(.+)")
    ]
    rewards = [metrics.series(f"reward/{name}_mean", name, color) for name, color in colors.items()]
    competence = [
        metrics.series(m.group(0), m.group(1), colors.get(m.group(1), COMPOSITE_COLOR))
        for m in metrics.matching(r"curriculum/competence/(.+)")
    ]
    sparsity = [
        metrics.series(m.group(0), m.group(1), colors.get(m.group(1), COMPOSITE_COLOR))
        for m in metrics.matching(r"curriculum/sparsity/(.+)")
    ]
    return [
        Chart("Curriculum weights (mean ± std over groups)", [s for s in weights if s]),
        Chart("Component rewards (train mean)", [s for s in rewards if s]),
        Chart("Curriculum competence", [s for s in competence if s]),
        Chart("Hoyer sparsity of group-centred scores", [s for s in sparsity if s]),
        metrics.lines("Curriculum stage (mean over groups)", ["curriculum/stage_mean"]),
    ]


def _other_charts(metrics: _Metrics) -> list[Chart]:
    """Metrics no chart above knows, grouped by prefix, so nothing logged goes unseen."""
    groups: dict[str, list[str]] = {}
    for key in metrics.keys:
        if key not in metrics.used:
            groups.setdefault(key.split("/", 1)[0] if "/" in key else "misc", []).append(key)
    charts = []
    for prefix, keys in groups.items():
        for start in range(0, len(keys), MAX_LINES_PER_OTHER_CHART):
            chunk = keys[start : start + MAX_LINES_PER_OTHER_CHART]
            title = prefix
            if len(keys) > MAX_LINES_PER_OTHER_CHART:
                title += f" ({start + 1}–{start + len(chunk)})"
            charts.append(metrics.lines(title, chunk))
    return charts
