"""The report page: a parsed run laid out as one HTML document with inline CSS, SVG and GIFs.

A reader should see at a glance whether the reward rose, whether training stayed in its trust
region and what changed in the videos, so the page puts the header and before → after numbers
first, then the chart sections from `charts.py`, then the same eval seeds before and after, the
rollout samples and the resolved config. This module owns that order, the markup and styling,
and the embedding of clips (base64 when small, a relative link when large); it reads clip files
but parses nothing else, which is `data.py`'s job. Every value from the run is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

from videogrpo.runs.report.charts import ChartSection, chart_sections
from videogrpo.runs.report.data import (
    EVAL_AXES,
    EVAL_FILE,
    EVAL_VIDEOS_DIR,
    ITERATION_KEY,
    ROLLOUTS_DIR,
    SUMMARY_FILE,
    Run,
    iteration_folders,
    iteration_of,
    metric_value,
    read_prompts,
    setting,
)
from videogrpo.runs.report.svg import Chart, render_svg

# Config settings shown in the header, as dotted paths into config.yaml.
HEADER_SETTINGS = (
    "preset",
    "model.type",
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
    number = metric_value(value)
    return "—" if number is None or not math.isfinite(number) else f"{number:.4g}"


def _duration(seconds: Any) -> str:
    number = metric_value(seconds)
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


def _section(section: ChartSection) -> str:
    """A chart section as a grid of figures; '' when none of its charts has anything to draw."""
    figures = "".join(_figure(chart) for chart in section.charts)
    if not figures:
        return ""
    intro_html = f'<p class="note">{_esc(section.intro)}</p>' if section.intro else ""
    return (
        f'<section><h2>{_esc(section.title)}</h2>{intro_html}<div class="charts">{figures}</div>'
        "</section>"
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
    name = setting(run.config, "run.name") or run.path.resolve().name
    settings = {key: setting(run.config, key) for key in HEADER_SETTINGS}
    settings = {k: v if v is not None else setting(run.summary, k) for k, v in settings.items()}
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
        old, new = metric_value(before.get(key)), metric_value(after.get(key))
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


def _image(path: Path, run_dir: Path, alt: str) -> str:
    """An <img> of a gif: embedded as a data URI when small, else linked relative to the run."""
    if path.stat().st_size <= MAX_EMBED_BYTES:
        src = "data:image/gif;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    else:
        src = path.relative_to(run_dir).as_posix()
    return f'<img src="{_esc(src)}" alt="{_esc(alt)}" loading="lazy">'


def _videos(run: Run) -> str:
    """The same eval seeds at the first and the last eval, side by side with their rewards."""
    folders = iteration_folders(run.path / EVAL_VIDEOS_DIR)
    if not folders:
        return ""
    ends = [folders[0], folders[-1]] if len(folders) > 1 else folders[:1]
    captions = [read_prompts(folder, run.notes) for folder in ends]
    names = sorted({p.name for folder in ends for p in folder.glob("*.gif")})
    cards = []
    for name in names:
        info = next((c[name] for c in captions if name in c), {})
        prompt = str(info.get("prompt", name))
        clips = []
        for folder in ends:
            clip = folder / name
            label = f"iter {iteration_of(folder)[0]}"
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
    folders = iteration_folders(run.path / ROLLOUTS_DIR)
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


def render_page(run: Run) -> str:
    """The whole report of `run` as one HTML document."""
    body = [
        _header(run),
        _table(run),
        *(_section(section) for section in chart_sections(run.metrics, run.evals)),
        _videos(run),
        _rollouts(run),
    ]
    if run.config_text:
        body.append(
            f"<section><details><summary>Resolved config</summary>"
            f"<pre>{_esc(run.config_text)}</pre></details></section>"
        )
    title = _esc(setting(run.config, "run.name") or run.path.resolve().name)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{title} · videogrpo report</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
