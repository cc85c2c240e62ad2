"""The run report: one self-contained HTML page with a run's curves, diagnostics and videos.

A reader should see at a glance whether the reward rose, whether training stayed in its trust
region (clip fractions, KL, ratios, gradient norms) and what changed in the videos, so the page
puts before → after numbers first, then curves, then the same eval seeds before and after. It is
one file with inline SVG (no JavaScript, no network, no plotting dependency) so it can be mailed
or archived with the run. It reads only the run-directory contract (docs/report.md) and works on
partial runs: every chart skips metrics that are absent, and NaN values become gaps.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from videogrpo.errors import UserError
from videogrpo.video_io import atomic_output

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
EVAL_VIDEOS_DIR = "eval_videos"
ROLLOUTS_DIR = "rollouts"
PROMPTS_FILE = "prompts.json"
ITERATION_KEY = "iteration"
COMPOSITE = "composite"
# The eval axes shown in the before → after table (higher is better for each), in this order.
EVAL_AXES = ("vq", "mq", "ta", COMPOSITE)
# Config settings shown in the header, as dotted paths into config.yaml.
HEADER_SETTINGS = (
    "preset",
    "model.backbone",
    "model.finetune",
    "sampling.rule",
    "sampling.eta",
    "selection.strategy",
    "kl.reference",
    "kl.schedule",
    "reward.curriculum",
)
# Bigger clips (real models at 480p) are linked instead of embedded, to keep the page loadable.
MAX_EMBED_BYTES = 4 * 2**20
# Unrecognised metrics are still charted, grouped by prefix, this many lines to a chart.
MAX_LINES_PER_OTHER_CHART = 6

CHART_WIDTH, CHART_HEIGHT = 440, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 14, 10, 24
Y_TICKS, X_TICKS = 5, 6
BAND_OPACITY = 0.18
STACK_OPACITY = 0.55
MARKER_RADIUS = 3.0
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
EVAL_COLOR = "#d62728"
# Per-step gradient norms: early (noisy) steps blue through late (clean) steps orange.
STEP_RAMP = ("#1f4e9c", "#e8702a")

Row = dict[str, float]
Scale = Callable[[float], float]  # data value → pixel coordinate
Segment = list[tuple[float, float]]  # pixel points of one unbroken stretch of a line


# ---------------------------------------------------------------------------- reading the run


@dataclass
class Run:
    """Everything the report reads from a run directory, already parsed and tolerant of gaps."""

    path: Path
    config: dict[str, Any]
    config_text: str
    metrics: list[Row]
    evals: list[Row]
    summary: dict[str, Any]
    notes: list[str]


def _number(value: Any) -> float | None:
    """A metric value as float (None and NaN become NaN: a gap); non-numbers are not metrics."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _read_jsonl(path: Path, notes: list[str]) -> list[Row]:
    """Numeric rows of a JSONL log; unreadable lines (e.g. a half-written last line) are noted."""
    if not path.is_file():
        return []
    rows: list[Row] = []
    skipped = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(record, dict):
            skipped += 1
            continue
        row = {key: number for key, v in record.items() if (number := _number(v)) is not None}
        row.setdefault(ITERATION_KEY, float(len(rows)))
        rows.append(row)
    if skipped:
        notes.append(f"{path.name}: skipped {skipped} unreadable line(s)")
    return rows


def _read_json(path: Path, notes: list[str]) -> Any:
    """A JSON file, or None when it is missing or unreadable (noted: the report still renders)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        notes.append(f"{path.name}: unreadable ({error})")
        return None


def _load_run(run_dir: Path) -> Run:
    if not run_dir.is_dir():
        problem = "is not a directory" if run_dir.exists() else "not found"
        raise UserError(
            f"run directory {str(run_dir)!r} {problem}; expected a folder written by "
            f"`videogrpo train` containing {METRICS_FILE}"
        )
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise UserError(
            f"{str(run_dir)!r} has no {METRICS_FILE}; expected a run directory written by "
            f"`videogrpo train` ({CONFIG_FILE}, {METRICS_FILE}, {EVAL_FILE}, {EVAL_VIDEOS_DIR}/)"
        )
    notes: list[str] = []
    summary = _read_json(run_dir / SUMMARY_FILE, notes)
    summary = summary if isinstance(summary, dict) else {}
    config_text = ""
    config: Any = None
    if (run_dir / CONFIG_FILE).is_file():
        config_text = (run_dir / CONFIG_FILE).read_text(encoding="utf-8", errors="replace")
        try:
            config = yaml.safe_load(config_text)
        except yaml.YAMLError:
            notes.append(f"{CONFIG_FILE}: not valid YAML; settings are not shown in the header")
    if not isinstance(config, dict) and isinstance(summary.get("config"), dict):
        config = summary["config"]
        config_text = yaml.safe_dump(config, sort_keys=False)
    return Run(
        path=run_dir,
        config=config if isinstance(config, dict) else {},
        config_text=config_text,
        metrics=_read_jsonl(metrics_path, notes),
        evals=_read_jsonl(run_dir / EVAL_FILE, notes),
        summary=summary,
        notes=notes,
    )


def _setting(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# ---------------------------------------------------------------------------- SVG charts


@dataclass
class Series:
    """One line (or point set) of a chart; NaN in `ys` breaks the line, `lows/highs` a band."""

    label: str
    xs: list[float]
    ys: list[float]
    color: str
    lows: list[float] | None = None
    highs: list[float] | None = None
    markers: bool = False  # points only, with hover titles (eval results)
    fill_opacity: float = BAND_OPACITY


@dataclass
class Chart:
    title: str
    series: list[Series]
    log_y: bool = False
    y_range: tuple[float, float] | None = None  # shared across charts that are compared
    note: str = ""


def _finite(value: float, log: bool = False) -> bool:
    return math.isfinite(value) and (value > 0 or not log)


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten: tick steps a reader can add in their head."""
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10**exponent
    nice = 1 if fraction <= 1 else 2 if fraction <= 2 else 5 if fraction <= 5 else 10
    return nice * 10.0**exponent


def _y_values(series: Iterable[Series]) -> list[float]:
    values: list[float] = []
    for line in series:
        values += line.ys + (line.lows or []) + (line.highs or [])
    return values


def y_range(values: Iterable[float], log: bool = False) -> tuple[float, float] | None:
    """The padded y-domain of finite values (log: in decades), or None when there is nothing."""
    finite = [v for v in values if _finite(v, log)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    if log:
        low, high = math.floor(math.log10(low)), math.ceil(math.log10(high))
        return (low, high) if high > low else (low, low + 1)
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = _nice_step((high - low) / Y_TICKS)
    return math.floor(low / step) * step, math.ceil(high / step) * step


def _tick_label(value: float) -> str:
    text = f"{value:.4g}"
    return "0" if text in ("-0", "0") else text


def _points(xs: list[float], ys: list[float], sx: Scale, sy: Scale, log: bool) -> list[Segment]:
    """Pixel segments of a line: a non-finite y (or ≤ 0 on a log axis) ends the segment."""
    segments: list[Segment] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if _finite(x) and _finite(y, log):
            segments[-1].append((sx(x), sy(y)))
        elif segments[-1]:
            segments.append([])
    return [segment for segment in segments if segment]


def _path(segment: Segment) -> str:
    return "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in segment)


def _band_paths(line: Series, sx: Scale, sy: Scale, log: bool) -> list[str]:
    """Closed areas between `lows` and `highs` over each run of x where both are finite."""
    assert line.lows is not None and line.highs is not None
    runs: list[list[tuple[float, float, float]]] = [[]]
    for x, low, high in zip(line.xs, line.lows, line.highs, strict=True):
        if _finite(x) and _finite(low, log) and _finite(high, log):
            runs[-1].append((sx(x), sy(low), sy(high)))
        elif runs[-1]:
            runs.append([])
    paths = []
    for run in runs:
        if len(run) > 1:
            outline = [(x, low) for x, low, _ in run] + [(x, high) for x, _, high in reversed(run)]
            paths.append(_path(outline) + " Z")
    return paths


def render_svg(chart: Chart) -> str | None:
    """The chart as inline SVG, or None when none of its series has a finite value."""
    log = chart.log_y
    domain = chart.y_range or y_range(_y_values(chart.series), log)
    xs = [x for line in chart.series for x in line.xs if _finite(x)]
    if domain is None or not xs:
        return None
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = domain
    left, right = MARGIN_LEFT, CHART_WIDTH - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, CHART_HEIGHT - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * (right - left)

    def sy(y: float) -> float:
        value = math.log10(y) if log else y
        return bottom - (value - y_low) / (y_high - y_low) * (bottom - top)

    parts = [
        f'<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="{html.escape(chart.title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    if log:
        y_ticks = [10.0**e for e in range(int(y_low), int(y_high) + 1)]
        y_labels = [f"1e{e}" for e in range(int(y_low), int(y_high) + 1)]
    else:
        step = _nice_step((y_high - y_low) / Y_TICKS)
        y_ticks = [k * step for k in range(round(y_low / step), round(y_high / step) + 1)]
        y_labels = [_tick_label(v) for v in y_ticks]
    for value, label in zip(y_ticks, y_labels, strict=True):
        y = sy(value)
        parts.append(f'<line class="gl" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="yt" x="{left - 4}" y="{y + 3:.1f}">{label}</text>')
    x_step = max(1.0, _nice_step((x_high - x_low) / X_TICKS))
    for k in range(math.ceil(x_low / x_step), math.floor(x_high / x_step) + 1):
        x = sx(k * x_step)
        parts.append(f'<line class="gl" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}"/>')
        parts.append(f'<text class="xt" x="{x:.1f}" y="{bottom + 14}">{k * x_step:g}</text>')
    parts.append(
        f'<rect class="frame" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"/>'
    )
    for line in chart.series:
        if line.lows is not None and line.highs is not None:
            for d in _band_paths(line, sx, sy, log):
                parts.append(
                    f'<path d="{d}" fill="{line.color}" fill-opacity="{line.fill_opacity}" '
                    'stroke="none"/>'
                )
    for line in chart.series:
        label = html.escape(line.label)
        for segment in _points(line.xs, line.ys, sx, sy, log):
            if len(segment) > 1 and not line.markers:
                parts.append(
                    f'<path d="{_path(segment)}" fill="none" stroke="{line.color}">'
                    f"<title>{label}</title></path>"
                )
        parts += _markers(line, sx, sy, log)
    parts.append("</svg>")
    return "".join(parts)


def _markers(line: Series, sx: Scale, sy: Scale, log: bool) -> list[str]:
    """Circles for eval points and for points a line cannot show (isolated by gaps)."""
    circles = []
    label = html.escape(line.label)
    ys = line.ys
    for i, (x, y) in enumerate(zip(line.xs, ys, strict=True)):
        if not (_finite(x) and _finite(y, log)):
            continue
        isolated = not any(0 <= j < len(ys) and _finite(ys[j], log) for j in (i - 1, i + 1))
        if line.markers or isolated:
            circles.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{MARKER_RADIUS}" '
                f'fill="{line.color}"><title>{label} @ {x:g}: {y:.4g}</title></circle>'
            )
    return circles


# ---------------------------------------------------------------------------- charts of a run


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
    logged += [m.group(1) for m in metrics.matching(r"curriculum/weight_(.+)_mean")]
    logged += [axis for axis in EVAL_AXES if any(axis in row for row in evals)]
    found = set(logged) - {COMPOSITE}
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
        title = "Composite reward" if name == COMPOSITE else f"Reward: {name}"
        charts.append(Chart(title, [s for s in series if s]))
    charts.append(
        metrics.lines(
            "Groups with zero reward std (no learning signal)",
            ["reward/zero_std_group_fraction"],
        )
    )
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
            ["policy/clip_fraction_pos", "policy/clip_fraction_neg", "policy/clip_fraction"],
        ),
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
            std_key=f"curriculum/weight_{m.group(1)}_std",
        )
        for m in metrics.matching(r"curriculum/weight_(.+)_mean")
    ]
    rewards = [metrics.series(f"reward/{name}_mean", name, color) for name, color in colors.items()]
    competence = [
        metrics.series(m.group(0), m.group(1), colors.get(m.group(1), COMPOSITE_COLOR))
        for m in metrics.matching(r"curriculum/competence_(.+)")
    ]
    return [
        Chart("Curriculum weights (mean ± std over samples)", [s for s in weights if s]),
        Chart("Component rewards (train mean)", [s for s in rewards if s]),
        Chart("Curriculum competence", [s for s in competence if s]),
        metrics.lines("Curriculum stage", ["curriculum/stage"]),
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


# ---------------------------------------------------------------------------- HTML page

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:#f6f7f9;
color:#1d232b}
main{max-width:1400px;margin:0 auto;padding:24px}
h1{margin:0 0 6px;font-size:24px}h2{margin:28px 0 10px;font-size:18px}
h3{margin:0 0 4px;font-size:13px;font-weight:600}
.chips span{display:inline-block;background:#e6ebf2;border-radius:10px;padding:1px 9px;
margin:2px 4px 2px 0;font-size:12px}
.facts{display:flex;gap:28px;margin:12px 0}.facts b{display:block;font-size:18px}
.facts div{color:#5a6472;font-size:12px}.badge{background:#fff3cd;color:#7a5b00}
table{border-collapse:collapse;background:#fff;border:1px solid #dde2e8}
td,th{padding:5px 14px;text-align:right;border-bottom:1px solid #eef1f4}
th:first-child,td:first-child{text-align:left}.up{color:#1b7f3b}.down{color:#c0392b}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:14px}
figure{margin:0}.chart{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px}
.chart svg{width:100%;height:auto;display:block}
.legend{font-size:11px;color:#3b4350}.legend span{margin-right:10px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;
vertical-align:-1px}.note{color:#6b7480;font-size:11px}
svg .gl{stroke:#edf0f3}svg .frame{fill:none;stroke:#c9d0d8}
svg path{stroke-width:1.6;stroke-linejoin:round}
svg text{font-size:10px;fill:#5a6472}svg .yt{text-anchor:end}svg .xt{text-anchor:middle}
.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px}
.pair{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px}
.clips{display:flex;gap:8px}.clips figure{flex:1;text-align:center}
.clips img{width:100%;image-rendering:pixelated;background:#000}
.clips figcaption{font-size:11px;color:#5a6472}.prompt{margin:6px 0 2px;font-weight:600}
.missing{padding:40px 0;background:#eee;color:#888;font-size:12px}
pre{background:#fff;border:1px solid #dde2e8;padding:10px;overflow:auto;font-size:12px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    """A number for a table cell: 4 significant digits, '—' for absent or NaN."""
    number = _number(value)
    return "—" if number is None or not math.isfinite(number) else f"{number:.4g}"


def _duration(seconds: Any) -> str:
    number = _number(seconds)
    if number is None or not math.isfinite(number):
        return "—"
    minutes, secs = divmod(round(number), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{number:.1f} s"


def _figure(chart: Chart) -> str:
    """A chart as a titled figure with an HTML legend; '' when it has nothing to draw."""
    svg = render_svg(chart)
    if svg is None:
        return ""
    slug = re.sub(r"[^a-z0-9]+", "-", chart.title.lower()).strip("-")
    legend = "".join(
        f'<span><i style="background:{s.color}"></i>{_esc(s.label)}</span>' for s in chart.series
    )
    note = f'<div class="note">{_esc(chart.note)}</div>' if chart.note else ""
    return (
        f'<figure class="chart" id="chart-{slug}"><h3>{_esc(chart.title)}</h3>{svg}'
        f'<figcaption class="legend">{legend}</figcaption>{note}</figure>'
    )


def _section(title: str, charts: list[Chart], intro: str = "") -> str:
    figures = "".join(_figure(chart) for chart in charts)
    if not figures:
        return ""
    intro_html = f'<p class="note">{_esc(intro)}</p>' if intro else ""
    return (
        f'<section><h2>{_esc(title)}</h2>{intro_html}<div class="charts">{figures}</div></section>'
    )


def _before_after(run: Run) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Eval numbers before and after training: summary.json, else first/last of eval.jsonl."""
    before, after = run.summary.get("eval_before"), run.summary.get("eval_after")
    if isinstance(before, dict) or isinstance(after, dict):
        return before or {}, after or {}, SUMMARY_FILE
    if not run.evals:
        return {}, {}, ""
    last = run.evals[-1] if len(run.evals) > 1 else {}
    return run.evals[0], last, EVAL_FILE


def _header(run: Run) -> str:
    name = _setting(run.config, "run.name") or run.path.resolve().name
    settings = {key: _setting(run.config, key) for key in HEADER_SETTINGS}
    settings = {k: v if v is not None else _setting(run.summary, k) for k, v in settings.items()}
    chips = "".join(
        f"<span>{_esc(key.rsplit('.', 1)[-1])}: {_esc(value)}</span>"
        for key, value in settings.items()
        if value is not None
    )
    finished = bool(run.summary)
    last = max((row[ITERATION_KEY] for row in run.metrics), default=None)
    facts = {
        "iterations": (
            _fmt(run.summary.get("iterations")) if finished else f"{_fmt(last)} (last logged)"
        ),
        "wall time": _duration(run.summary.get("wall_seconds")),
        "status": "finished" if finished else "partial (no summary.json yet)",
    }
    facts_html = "".join(f"<div><b>{_esc(v)}</b>{_esc(k)}</div>" for k, v in facts.items())
    notes = "".join(f'<p class="note badge">{_esc(note)}</p>' for note in run.notes)
    return (
        f'<header><h1>{_esc(name)}</h1><div class="chips">{chips}</div>'
        f'<div class="facts">{facts_html}</div>{notes}</header>'
    )


def _table(run: Run) -> str:
    before, after, source = _before_after(run)
    if not source:
        return ""
    shared = [k for k in before if k in after and k not in EVAL_AXES and k != ITERATION_KEY]
    keys = [k for k in EVAL_AXES if k in before or k in after] + shared
    rows = []
    for key in keys:
        old, new = _number(before.get(key)), _number(after.get(key))
        delta, css = "—", ""
        if old is not None and new is not None and math.isfinite(old) and math.isfinite(new):
            delta = f"{new - old:+.4g}"
            if key in EVAL_AXES and new != old:
                css = ' class="up"' if new > old else ' class="down"'
        rows.append(
            f"<tr><td>{_esc(key)}</td><td>{_fmt(old)}</td><td>{_fmt(new)}</td>"
            f"<td{css}>{delta}</td></tr>"
        )
    return (
        '<section><h2>Held-out eval: before → after</h2><table id="before-after">'
        "<tr><th>metric</th><th>before</th><th>after</th><th>Δ</th></tr>"
        f'{"".join(rows)}</table><p class="note">from {_esc(source)}</p></section>'
    )


def _iteration_of(folder: Path) -> tuple[int, str]:
    """Sort key of `iter_000040`-style folders: by number, then by name."""
    match = re.search(r"(\d+)$", folder.name)
    return (int(match.group(1)) if match else -1, folder.name)


def _subfolders(path: Path) -> list[Path]:
    return sorted((p for p in path.glob("iter_*") if p.is_dir()), key=_iteration_of)


def _prompts(folder: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    entries = _read_json(folder / PROMPTS_FILE, notes)
    if not isinstance(entries, list):
        return {}
    return {e["file"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)}


def _image(path: Path, run_dir: Path, alt: str) -> str:
    """An <img> of a gif: embedded as a data URI when small, else linked relative to the run."""
    if path.stat().st_size <= MAX_EMBED_BYTES:
        src = "data:image/gif;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    else:
        src = path.relative_to(run_dir).as_posix()
    return f'<img src="{_esc(src)}" alt="{_esc(alt)}" loading="lazy">'


def _videos(run: Run) -> str:
    """The same eval seeds at the first and the last eval, side by side with their rewards."""
    folders = _subfolders(run.path / EVAL_VIDEOS_DIR)
    if not folders:
        return ""
    ends = [folders[0], folders[-1]] if len(folders) > 1 else folders[:1]
    captions = [_prompts(folder, run.notes) for folder in ends]
    names = sorted({p.name for folder in ends for p in folder.glob("*.gif")})
    cards = []
    for name in names:
        info = next((c[name] for c in captions if name in c), {})
        prompt = str(info.get("prompt", name))
        clips = []
        for folder in ends:
            clip = folder / name
            label = f"iter {_iteration_of(folder)[0]}"
            body = (
                _image(clip, run.path, prompt)
                if clip.is_file()
                else '<div class="missing">missing</div>'
            )
            clips.append(f"<figure>{body}<figcaption>{_esc(label)}</figcaption></figure>")
        rewards = [c.get(name, {}).get("rewards") for c in captions]
        rewards = [r if isinstance(r, dict) else {} for r in rewards]
        keys = list(dict.fromkeys(k for r in rewards for k in r))
        keys = [k for k in EVAL_AXES if k in keys] + [k for k in keys if k not in EVAL_AXES]
        meta = [f"seed {info['seed']}"] if "seed" in info else []
        meta += [f"{k} " + " → ".join(_fmt(r.get(k)) for r in rewards) for k in keys]
        cards.append(
            f'<div class="pair"><div class="clips">{"".join(clips)}</div>'
            f'<p class="prompt">{_esc(prompt)}</p>'
            f'<p class="note">{_esc(" · ".join(meta))}</p></div>'
        )
    title = "Eval videos: before → after (same seeds)" if len(ends) > 1 else "Eval videos"
    return f'<section><h2>{title}</h2><div class="pairs">{"".join(cards)}</div></section>'


def _rollouts(run: Run) -> str:
    """Links to the saved rollout samples and their per-group rewards, for auditing."""
    folders = _subfolders(run.path / ROLLOUTS_DIR)
    if not folders:
        return ""
    items = []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        links = " ".join(
            f'<a href="{_esc(p.relative_to(run.path).as_posix())}">'
            f"{_esc(p.relative_to(folder).as_posix())}</a>"
            for p in files
            if p.suffix == ".json"
        )
        videos = sum(p.suffix in (".gif", ".mp4") for p in files)
        href = _esc(folder.relative_to(run.path).as_posix())
        items.append(f'<li><a href="{href}">{_esc(folder.name)}</a>: {videos} videos. {links}</li>')
    return f"<section><h2>Rollout samples</h2><ul>{''.join(items)}</ul></section>"


def _page(run: Run) -> str:
    metrics = _Metrics(run.metrics)
    names = _component_names(metrics, run.evals)
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    body = [
        _header(run),
        _table(run),
        _section(
            "Rewards",
            _reward_charts(metrics, run.evals, colors),
            "training rollouts (mean ± std over the batch) with held-out eval points in red",
        ),
        _section("Self-paced curriculum", _curriculum_charts(metrics, colors)),
        _section("Trust region and optimisation diagnostics", _diagnostic_charts(metrics)),
        _section("Time", _timing_charts(metrics)),
        _section("Other metrics", _other_charts(metrics)),
        _videos(run),
        _rollouts(run),
    ]
    if run.config_text:
        body.append(
            f"<section><details><summary>Resolved config</summary>"
            f"<pre>{_esc(run.config_text)}</pre></details></section>"
        )
    title = _esc(_setting(run.config, "run.name") or run.path.resolve().name)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{title} · videogrpo report</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (atomically: a reader never sees a half-written page)."""
    run = _load_run(Path(run_dir))
    path = run.path / REPORT_FILE
    page = _page(run)
    try:
        with atomic_output(path, suffix=".html") as temp:
            temp.write_text(page, encoding="utf-8")
    except OSError as error:  # read-only run folder, full disk: one line, not a traceback
        raise UserError(f"cannot write {str(path)!r}: {error.strerror or error}") from error
    return path
