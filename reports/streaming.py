"""The report section of a streaming run: each period's metrics, scored before the model trained on it."""

from __future__ import annotations

from recscale.reports import plots
from recscale.reports.render import Report
from recscale.reports.rundata import RunData


def streaming_section(report: Report, run: RunData) -> None:
    """Progressive validation by period (``trainer.streaming``): a table and NE / AUC per period."""
    streaming = run.summary.get("streaming") or {}
    records = streaming.get("progressive") or []
    if not records:
        return
    report.heading("Progressive validation by period")
    index = [r.get("period_index", i + 1) for i, r in enumerate(records)]
    ne = [r.get("ne") for r in records]
    auc = [r.get("auc") for r in records]
    if all(isinstance(v, float) for v in ne + auc):
        panels = [("normalized entropy", "NE", [(run.name, index, ne)]), ("AUC", "AUC", [(run.name, index, auc)])]
        report.image("progressive", plots.line_panels(panels, xlabel="period"), "NE and AUC per period")
    rows = [
        [
            r.get("period"),
            r.get("step"),
            r.get("num_examples"),
            r.get("auc"),
            r.get("oracle_auc"),
            r.get("logloss"),
            r.get("ne"),
        ]
        for r in records
    ]
    rows.append(["mean", None, None, None, None, None, streaming.get("mean_ne")])
    report.table(["period", "after step", "examples", "AUC", "oracle AUC", "logloss", "NE"], rows)
    report.text(
        "Each period is scored by the model trained on the periods before it, before it trains on that period "
        "(progressive validation); NE = logloss / the entropy of the period's positive rate, lower is better.",
        note=True,
    )
    if skipped := streaming.get("skipped"):
        report.text(
            f"Left out as too short for one step (trainer.streaming.skip_short_first): {', '.join(skipped)}; "
            "their rows were neither trained on nor scored.",
            note=True,
        )
