"""``recscale report``: one HTML page (+ Markdown twin) for runs, sweeps and scaling-law studies.

Inputs are run directories, sweep directories (``sweep.json``) and scaling-law directories
(``scaling_law.json``); a directory holding ``projection.json`` adds the projection. One run or one
study writes ``report.html`` into its own directory by default; several inputs need ``out``.
"""

from __future__ import annotations

from pathlib import Path

from recscale.reports.render import Report
from recscale.reports.rundata import is_study, load_run, load_study
from recscale.reports.sections import comparison_section, run_section
from recscale.reports.studies import study_section

REPORT = "report.html"


def write_report(inputs: list[Path], out: Path | None = None) -> Path:
    """Build the report of ``inputs`` and write it; returns the HTML path.

    Raises:
        ValueError: no input, an input that is neither a run nor a study, or several inputs without ``out``.
    """
    if not inputs:
        raise ValueError("recscale report: give at least one run, sweep or scaling-law directory")
    paths = [Path(p).expanduser() for p in inputs]
    if out is None:
        if len(paths) > 1:
            raise ValueError("recscale report: several inputs; say where the page goes with --out")
        out = paths[0] / REPORT
    elif out.suffix != ".html":
        out = out / REPORT
    report = build_report(paths)
    html_path, _ = report.write(out)
    return html_path


def build_report(paths: list[Path]) -> Report:
    """The report of runs and studies, in the order given."""
    studies = [load_study(p) for p in paths if is_study(p)]
    runs = [load_run(p) for p in paths if not is_study(p)]
    if len(paths) == 1 and runs:
        report = Report(f"recscale run: {runs[0].name}")
        run_section(report, runs[0])
        return report
    if len(paths) == 1:
        title = studies[0].kind.replace("_", " ")
        report = Report(f"recscale {title}: {studies[0].path.name}")
    else:
        report = Report(f"recscale report: {len(paths)} inputs")
    for study in studies:
        study_section(report, study)
    if runs:
        comparison_section(report, runs, "runs")
    return report
