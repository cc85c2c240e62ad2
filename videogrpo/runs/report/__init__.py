"""The run report: one self-contained HTML page with a run's curves, diagnostics and videos.

The page is one file with inline SVG (no JavaScript, no network, no plotting dependency) so it can
be mailed or archived with the run; it reads only the run-directory contract (docs/report.md) and
works on partial runs. This package is the entry point, `write_report`, and splits the work by
concern so each part can be read alone: `data` reads the run directory, `charts` decides which
charts the logged metrics make, `svg` draws one chart, and `page` assembles the HTML.
"""

from __future__ import annotations

from pathlib import Path

from videogrpo.errors import UserError
from videogrpo.runs.report.data import REPORT_FILE, load_run
from videogrpo.runs.report.page import render_page
from videogrpo.runs.video_io import atomic_output

__all__ = ["REPORT_FILE", "write_report"]


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (atomically: a reader never sees a half-written page)."""
    run = load_run(Path(run_dir))
    path = run.path / REPORT_FILE
    page = render_page(run)
    try:
        with atomic_output(path, suffix=".html") as temp:
            temp.write_text(page, encoding="utf-8")
    except OSError as error:  # read-only run folder, full disk: one line, not a traceback
        raise UserError(f"cannot write {str(path)!r}: {error.strerror or error}") from error
    return path
