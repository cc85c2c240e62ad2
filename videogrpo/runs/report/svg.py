"""Line charts as inline SVG: the report's small plotting library, with no plotting dependency.

The report must be one self-contained file that opens without JavaScript or network access, so
its charts are SVG strings drawn here rather than images from matplotlib. This module knows only
geometry: a `Chart` of `Series` (lines, points, ±std bands, stacked areas) becomes nice ticks,
optional log scale, gaps where values are NaN, and markers for points a line cannot show. What
to chart and in which colours is decided by `charts.py`; the CSS classes used here are styled by
the page (`page.py`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

CHART_WIDTH, CHART_HEIGHT = 440, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 14, 10, 24
Y_TICKS, X_TICKS = 5, 6
BAND_OPACITY = 0.18
MARKER_RADIUS = 3.0

Scale = Callable[[float], float]  # data value → pixel coordinate
Segment = list[tuple[float, float]]  # pixel points of one unbroken stretch of a line


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
    """A titled plot of series; `y_range` fixes the y-domain, `note` is a caption under it."""

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
