"""A report job, end to end on a worker: read the jobs from the store, build the page, write the
HTML (and the PDF) into the job's folder, and hand back what `medq results REPORT --json` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medq.common.report import render
from medq.common.report.build import build_page
from medq.common.specs import ReportSpec
from medq.common.store.db import Store
from medq.common.store.models import utcnow


def report_paths(out_dir: Path, report_id: str) -> tuple[Path, Path]:
    """Where a report's files go: named by the report job only (never by data or patients)."""
    return out_dir / f"report-{report_id}.html", out_dir / f"report-{report_id}.pdf"


def render_job(store: Store, spec_data: dict[str, Any], report_id: str | None = None) -> dict[str, Any]:
    spec = ReportSpec.from_dict(spec_data)
    now = utcnow()
    page, running = build_page(store, list(spec.jobs), now)
    html_path, pdf_path = report_paths(Path(spec.out_dir), report_id or "-".join(spec.jobs))
    render.write_html(page, html_path)
    outputs = {"html": str(html_path), "pdf": None, "as_of": now.isoformat(), "jobs": list(spec.jobs),
               "running": running}
    if spec.pdf:  # the page stays, and says why there is no PDF, if printing fails
        from medq.common.errors import JobError

        try:
            outputs["pdf"] = str(render.write_pdf(html_path, pdf_path))
        except JobError as exc:
            outputs["pdf_error"] = str(exc)
    return outputs
